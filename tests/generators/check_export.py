"""Checks `diffseg export` from PyTorch's side: the .pt it writes loads with torch.load(weights_only=True), every tensor
equals the official tests/fixtures/adm-tiny/model.pt bit for bit (keys in the same order), and the state_dict loads
(strict) into the ADM UNet of adm_reference.py, whose outputs then match the official eps.npy.

    /usr/bin/python3 tests/generators/check_export.py              exports adm-tiny through the CLI (convert → export)
    /usr/bin/python3 tests/generators/check_export.py MODEL.pt [FLAGS.json]    checks an exported file against adm-tiny

The CLI is `dotnet run --project src/IlgpuDiffSeg.Cli -c Release --` unless $DIFFSEG names another command line.
"""
import json
import os
import shlex
import struct
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import torch

from adm_reference import UNet

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.normpath(os.path.join(HERE, "..", ".."))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "adm-tiny")


def diffseg(*args):
    cmd = shlex.split(os.environ.get("DIFFSEG", "dotnet run --project src/IlgpuDiffSeg.Cli -c Release --"))
    done = subprocess.run(cmd + list(args), cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"diffseg {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return done


def export_adm_tiny(folder):
    converted, pt, flags = (os.path.join(folder, n) for n in ("adm-tiny.safetensors", "adm-tiny.pt", "adm-tiny-flags.json"))
    diffseg("convert", os.path.join(FIXTURE, "model.pt"), "--flags", os.path.join(FIXTURE, "flags.json"), "-o", converted)
    diffseg("export", converted, "-o", pt, "--flags-out", flags)
    print(f"exported through the CLI: {pt}")
    return pt, flags


def check_zip(pt):
    """Stored entries, CRCs right, every entry's data on a 64-byte boundary, torch's records present."""
    with zipfile.ZipFile(pt) as z, open(pt, "rb") as raw:
        assert z.testzip() is None, "a CRC does not match"
        infos = z.infolist()
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos), "compressed entries"
        for i in infos:
            raw.seek(i.header_offset)
            name_length, extra_length = struct.unpack("<HH", raw.read(30)[26:30])
            start = i.header_offset + 30 + name_length + extra_length
            assert start % 64 == 0, f"{i.filename} data starts at {start}, not on a 64-byte boundary"
        prefix = infos[0].filename.split("/")[0]
        assert z.read(f"{prefix}/version").strip() == b"3" and z.read(f"{prefix}/byteorder") == b"little"
        print(f"zip: {len(infos)} stored entries, CRCs match, data 64-byte aligned, version 3, byteorder little")


def main():
    with tempfile.TemporaryDirectory() as folder:
        if len(sys.argv) > 1:
            pt, flags_path = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
        else:
            pt, flags_path = export_adm_tiny(folder)
        check_zip(pt)

        ours = torch.load(pt, map_location="cpu", weights_only=True)
        official = torch.load(os.path.join(FIXTURE, "model.pt"), map_location="cpu", weights_only=True)
        assert list(ours) == list(official), "keys differ or are in another order"
        for name, ref in official.items():
            t = ours[name]
            assert t.dtype == ref.dtype and t.shape == ref.shape and t.stride() == ref.stride(), name
            assert not t.requires_grad, name
            assert torch.equal(t.view(torch.int32), ref.view(torch.int32)), f"{name} differs"
        count = sum(t.numel() for t in ours.values())
        print(f"torch.load(weights_only=True): {len(ours)} tensors, {count:,} values, "
              f"equal bit for bit to the official model.pt, keys in the same order")

        flags = json.load(open(os.path.join(FIXTURE, "flags.json")))
        if flags_path is not None:
            written = json.load(open(flags_path))
            assert written == flags, f"flags differ: {written} vs {flags}"
            print("flags written by --flags-out equal the fixture's flags.json")
        model = UNet(flags).eval()
        result = model.load_state_dict(ours, strict=True)
        x0 = torch.from_numpy(np.load(os.path.join(FIXTURE, "x0.npy")))
        t = torch.from_numpy(np.load(os.path.join(FIXTURE, "t.npy")))
        with torch.no_grad():
            eps = model(x0, t).numpy()
        ref = np.load(os.path.join(FIXTURE, "eps.npy"))
        err = np.abs(eps - ref).max() / np.abs(ref).max()
        print(f"load_state_dict(strict=True) into the ADM UNet: {result}; eps vs official eps.npy: "
              f"max|diff|/max|ref| = {err:.2e}")
        assert err < 1e-5
    print("OK")


if __name__ == "__main__":
    main()
