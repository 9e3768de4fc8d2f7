#!/usr/bin/env python3
"""Builds the hostile-input campaign of issue #13: malformed checkpoints, pickles, .npy, safetensors, configs, images
and masks, each with the diffseg command that reads it. Run by run_hostile.py (see tests/hostile/README.md); needs
/usr/bin/python3 with torch and numpy, and a built diffseg (the product itself never needs Python).

    python3 tests/hostile/make_hostile.py DIFFSEG WORKDIR [--quick] [--only=GROUP,...]

writes WORKDIR/base (a converted tiny model, a 4+4-image data set, a trained 2-member experiment) and
WORKDIR/cases.jsonl: one case per line, {id, kind, note, cmd, names, cwd, gadget}. The cases of the newer commands
(train-ddpm, loss, sample, synthesize, export) are in hostile_commands.py; --only=train_ddpm_cases,loss_cases builds
just those groups (the function names).
"""
import collections
import io
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import zipfile
import zlib

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile_formats import *  # noqa: E402,F403

DIFFSEG, WORK = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
QUICK = "--quick" in sys.argv
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TINY = os.path.join(REPO, "tests", "fixtures", "adm-tiny")
BASE = os.path.join(WORK, "base")
CASES = os.path.join(WORK, "cases")
cases = []

rng = random.Random(13)


def case_dir(i):
    d = os.path.join(CASES, f"{i:05d}")
    os.makedirs(d, exist_ok=True)
    return d


def add(kind, note, cmd, names, setup=None, gadget=False):
    i = len(cases)
    d = case_dir(i)
    cmd = [c.replace("{D}", d) for c in cmd]
    if setup:
        setup(d)
    cases.append({"id": i, "kind": kind, "note": note, "cmd": cmd, "names": names, "cwd": d, "gadget": gadget})


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- base
def mutate_bytes_r(b, n=None, lo=0):
    return mutate_bytes(b, n, lo, rng)


def setup_base():
    os.makedirs(BASE, exist_ok=True)
    for split, n, seed in (("train", 4, 1), ("test", 4, 2)):
        d = os.path.join(BASE, split)
        os.makedirs(d, exist_ok=True)
        r = np.random.RandomState(seed)
        for i in range(n):
            mask = np.zeros((32, 32), np.int64)
            img = (r.rand(32, 32, 3) * 60).astype(np.uint8)
            for c in range(1, 5):
                y0, x0 = r.randint(0, 24, 2)
                mask[y0:y0 + 8, x0:x0 + 8] = c
                img[y0:y0 + 8, x0:x0 + 8] = [40 * c, 255 - 50 * c, (90 * c) % 256]
            write(os.path.join(d, f"img_{i}.png"), png_rgb(img))
            np.save(os.path.join(d, f"img_{i}.npy"), mask)
    run([DIFFSEG, "convert", os.path.join(TINY, "model.pt"), "--flags", os.path.join(TINY, "flags.json"),
         "-o", os.path.join(BASE, "tiny.safetensors")])
    write_config(os.path.join(BASE, "exp.json"), os.path.join(BASE, "exp"))
    run([DIFFSEG, "train", "--config", os.path.join(BASE, "exp.json"), "--device", "cpu"])


def base_config(exp_dir):
    return {"exp_dir": exp_dir, "model_type": "ddpm", "category": "hostile", "number_class": 5, "ignore_label": 255,
            "training_path": os.path.join(BASE, "train"), "testing_path": os.path.join(BASE, "test"),
            "model_path": os.path.join(BASE, "tiny.safetensors"), "dim": [32, 32, 320], "steps": [50, 150],
            "blocks": [2, 5, 7], "model_num": 2, "batch_size": 64, "training_number": 4, "testing_number": 4,
            "share_noise": True, "seed": 0, "max_epochs": 1}


def write_config(path, exp_dir, **over):
    c = base_config(exp_dir)
    c.update(over)
    with open(path, "w") as f:
        json.dump(c, f)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"setup failed: {' '.join(cmd)}\n{r.stderr}")


def copy_exp(d):
    """A private copy of the trained experiment folder (evaluate writes into it)."""
    import shutil
    shutil.copytree(os.path.join(BASE, "exp"), os.path.join(d, "exp"))


# ---------------------------------------------------------------- .pt checkpoints (convert)
def pt_cases():
    sd = torch.load(os.path.join(TINY, "model.pt"), map_location="cpu")
    names = list(sd.keys())
    flags = os.path.join(TINY, "flags.json")

    def spec(mod=None):
        """FakeTensors and storages reproducing the fixture, with mod(name, dict) free to change one."""
        tensors, storages = collections.OrderedDict(), {}
        for k, (name, t) in enumerate(sd.items()):
            s = {"type": "FloatStorage", "key": str(k), "numel": t.numel(), "offset": 0, "shape": list(t.shape),
                 "stride": list(t.contiguous().stride()), "bytes": t.contiguous().numpy().tobytes(), "fn": None}
            if mod:
                mod(name, s)
            if s is None:
                continue
            storages[s["key"]] = s["bytes"]
            tensors[name] = FakeTensor(FakeStorage(s["type"], s["key"], s["numel"]), s["offset"], s["shape"], s["stride"], s["fn"])
        return tensors, storages

    def conv(note, build, names_=("model.pt",)):
        def setup(d):
            build(os.path.join(d, "model.pt"))
        add(".pt checkpoint (convert)", note, [DIFFSEG, "convert", "{D}/model.pt", "--flags", flags, "-o", "{D}/out.safetensors"],
            list(names_), setup)

    def pkl_of(tensors):
        return pickle_state(tensors)

    base_t, base_s = spec()
    base_pkl = pkl_of(base_t)
    conv("baseline rebuilt by the generator (must convert)", lambda p: pt_zip(p, base_pkl, base_s))
    conv("torch.save of the fixture, non-contiguous weights (must convert)",
         lambda p: torch.save(collections.OrderedDict((k, v.t().contiguous().t() if v.dim() == 2 else v) for k, v in sd.items()), p))
    conv("torch.save, fp16 and bf16 and fp64 tensors (must convert)",
         lambda p: torch.save(collections.OrderedDict((k, v.half() if i % 3 == 0 else v.bfloat16() if i % 3 == 1 else v.double())
                                                      for i, (k, v) in enumerate(sd.items())), p))
    conv("torch.save, {'state_dict': sd} wrapper (must convert)", lambda p: torch.save({"state_dict": sd}, p))

    # tensor metadata against storage
    first = names[0]
    for note, fn in [
        ("negative storage offset", lambda n, s: s.update(offset=-4) if n == first else None),
        ("huge storage offset", lambda n, s: s.update(offset=1 << 40) if n == first else None),
        ("negative stride", lambda n, s: s.update(stride=[-1, 1]) if n == first else None),
        ("huge stride", lambda n, s: s.update(stride=[1 << 40, 1]) if n == first else None),
        ("stride of wrong rank", lambda n, s: s.update(stride=[1]) if n == first else None),
        ("stride longer than shape", lambda n, s: s.update(stride=[32, 1, 1]) if n == first else None),
        ("transposed strides on contiguous data", lambda n, s: s.update(stride=[1, s["shape"][0]]) if n == first else None),
        ("zero strides (broadcast)", lambda n, s: s.update(stride=[0, 0]) if n == first else None),
        ("numel larger than storage bytes", lambda n, s: s.update(numel=s["numel"] * 2) if n == first else None),
        ("numel smaller than the tensor", lambda n, s: s.update(numel=3) if n == first else None),
        ("numel negative", lambda n, s: s.update(numel=-1) if n == first else None),
        ("numel 2^62", lambda n, s: s.update(numel=1 << 62) if n == first else None),
        ("storage bytes truncated", lambda n, s: s.update(bytes=s["bytes"][:100]) if n == first else None),
        ("storage bytes odd length", lambda n, s: s.update(bytes=s["bytes"] + b"\x00") if n == first else None),
        ("HalfStorage over float bytes", lambda n, s: s.update(type="HalfStorage") if n == first else None),
        ("DoubleStorage over float bytes", lambda n, s: s.update(type="DoubleStorage") if n == first else None),
        ("LongStorage", lambda n, s: s.update(type="LongStorage") if n == first else None),
        ("unknown storage type", lambda n, s: s.update(type="EvilStorage") if n == first else None),
        ("shape negative", lambda n, s: s.update(shape=[-128, 32]) if n == first else None),
        ("shape 2^31", lambda n, s: s.update(shape=[1 << 31, 32]) if n == first else None),
        ("shape 2^40 x 2^40", lambda n, s: s.update(shape=[1 << 40, 1 << 40]) if n == first else None),
        ("shape with a zero", lambda n, s: s.update(shape=[0, 32]) if n == first else None),
        ("two tensors share one storage key with other dtypes",
         lambda n, s: s.update(key="0", type="HalfStorage", bytes=sd[first].numpy().tobytes()) if n == names[1] else None),
        ("storage key missing from archive", lambda n, s: s.update(key="missing") if n == first else None),
        ("storage key with path traversal", lambda n, s: s.update(key="../../etc/passwd") if n == first else None),
        ("NaN in a weight", lambda n, s: s.update(bytes=np.full(s["numel"], np.nan, np.float32).tobytes()) if n == first else None),
        ("Inf in a bias", lambda n, s: s.update(bytes=np.array([np.inf] + [0] * (s["numel"] - 1), np.float32).tobytes())
         if n == names[1] else None),
        ("rebuild function os.system (gadget)", lambda n, s: s.update(fn=os.system) if n == first else None),
    ]:
        t, s = spec(fn)
        try:
            p = pkl_of(t)
        except Exception as e:  # noqa
            print("skip", note, e)
            continue
        conv(note, lambda path, p=p, s=s: pt_zip(path, p, s), ("model.pt",))

    # pickle-level crafted opcodes
    crafted = {
        "BINUNICODE length -1": b"\x80\x02X\xff\xff\xff\xff",
        "BINUNICODE length 2^31-1": b"\x80\x02X\xff\xff\xff\x7f",
        "BINBYTES8 2^40": b"\x80\x02\x8e" + struct.pack("<Q", 1 << 40),
        "BINUNICODE8 2^63-1": b"\x80\x02\x8d" + struct.pack("<Q", (1 << 63) - 1),
        "BINSTRING negative": b"\x80\x02T\xff\xff\xff\xff",
        "LONG4 negative length": b"\x80\x02\x8b\xff\xff\xff\xff",
        "LONG4 2^31-1 length": b"\x80\x02\x8b\xff\xff\xff\x7f",
        "LONG1 255 bytes": b"\x80\x02\x8a\xff" + b"\x01" * 255 + b".",
        "INT malformed": b"\x80\x02Iabc\n.",
        "INT huge": b"\x80\x02I99999999999999999999999\n.",
        "LONG malformed": b"\x80\x02Lxyz\n.",
        "LONG huge": b"\x80\x02L" + b"9" * 400 + b"L\n.",
        "FLOAT malformed": b"\x80\x02Fnope\n.",
        "GET missing memo": b"\x80\x02g5\n.",
        "LONG_BINGET 2^32-1": b"\x80\x02j\xff\xff\xff\xff.",
        "PUT malformed": b"\x80\x02Np-1x\n.",
        "stack underflow STOP": b"\x80\x02.",
        "APPEND to non-list": b"\x80\x02NNa.",
        "SETITEM to non-dict": b"\x80\x02NNNs.",
        "STACK_GLOBAL with non-strings": b"\x80\x02KK\x93.",
        "REDUCE with non-tuple args": b"\x80\x02cos\nsystem\nK\x01R.",
        "gadget os.system": b"\x80\x02cos\nsystem\nX\x0a\x00\x00\x00touch PWND\x85R.",
        "gadget posix.system": b"\x80\x02cposix\nsystem\nX\x0a\x00\x00\x00touch PWND\x85R.",
        "gadget builtins.eval": b"\x80\x02cbuiltins\neval\nX\x1b\x00\x00\x00open('PWND','w').write('x')\x85R.",
        "gadget builtins.exec": b"\x80\x02cbuiltins\nexec\nX\x1b\x00\x00\x00open('PWND','w').write('x')\x85R.",
        "gadget subprocess.Popen": b"\x80\x02csubprocess\nPopen\n(X\x05\x00\x00\x00touchX\x04\x00\x00\x00PWNDl\x85R.",
        "gadget BUILD __setstate__": b"\x80\x02cos\n_wrap_close\n)\x81}X\x0b\x00\x00\x00__setstate__cos\nsystem\nsbX\x0a\x00\x00\x00touch PWND" + b"b.",
        "gadget NEWOBJ_EX": b"\x80\x04\x8c\x02os\x8c\x06system\x93X\x0a\x00\x00\x00touch PWND\x85}\x92.",
        "gadget INST opcode": b"(X\x0a\x00\x00\x00touch PWNDios\nsystem\n.",
        "gadget OBJ opcode": b"(cos\nsystem\nX\x0a\x00\x00\x00touch PWNDo.",
        "gadget EXT1": b"\x80\x02\x82\x01.",
        "unknown opcode 0xff": b"\x80\x02\xff",
        "empty pickle": b"",
        "proto 99": b"\x80\x63N.",
        "FRAME length 2^62": b"\x80\x04\x95" + struct.pack("<Q", 1 << 62) + b"N.",
        "deep MARK nesting 10^6": b"\x80\x02" + b"(" * 1000000 + b".",
        "deep list nesting 10^6 appended": b"\x80\x02" + b"]" * 1000000 + b"a" * 999999 + b".",
        "dict with list key": b"\x80\x02}]Ns.",
        "dict with None key": b"\x80\x02}NNs.",
        "state_dict with int keys": b"\x80\x02}K\x01Ns.",
        "persistent id not a tuple": b"\x80\x02NQ.",
        "persistent id short tuple": b"\x80\x02X\x07\x00\x00\x00storage\x85Q.",
        "rebuild_tensor_v2 with no args": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)R.",
        "rebuild_tensor_v2 with None storage": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(NK\x00)(tK\x00)\x89tR.",
        "rebuild_parameter with no args": b"\x80\x02ctorch._utils\n_rebuild_parameter\n)R.",
        "OrderedDict then SETITEMS odd": b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00aNX\x01\x00\x00\x00bu.",
        "memo loop self-reference": b"\x80\x02]q\x00h\x00a.",
        "MEMOIZE then huge BINPUT churn": b"\x80\x04" + b"N\x94" * 500000 + b".",
        "TUPLE3 underflow": b"\x80\x02N\x87.",
        "POP_MARK without mark": b"\x80\x021.",
        "SHORT_BINUNICODE invalid utf8": b"\x80\x02\x8c\x02\xff\xfe.",
        "BINFLOAT truncated": b"\x80\x02G\x00\x00.",
    }
    for note, p in crafted.items():
        gadget = note.startswith("gadget") or "os.system" in note
        def setup(d, p=p):
            pt_zip(os.path.join(d, "model.pt"), p, base_s)
        add(".pt checkpoint (convert)", "pickle: " + note,
            [DIFFSEG, "convert", "{D}/model.pt", "--flags", flags, "-o", "{D}/out.safetensors"], ["model.pt"], setup, gadget)

    # zip bombs: data.pkl that inflates to 1 GiB of '(' and 3 GiB of ']'
    def bomb(path, byte, gib):
        with zipfile.ZipFile(path, "w") as z:
            zi = zipfile.ZipInfo("archive/data.pkl")
            zi.compress_type = zipfile.ZIP_DEFLATED
            with z.open(zi, "w", force_zip64=True) as f:
                f.write(b"\x80\x02")
                chunk = byte * (1 << 24)
                for _ in range(gib * 64):
                    f.write(chunk)
                f.write(b".")
            for k, b in base_s.items():
                z.writestr("archive/data/" + k, b)
    if not QUICK:
        for byte, gib in ((b"(", 1), (b"]", 3)):
            conv(f"deflated data.pkl of {gib} GiB of {byte.decode()}", lambda p, byte=byte, gib=gib: bomb(p, byte, gib))

    # zip structure
    good = io.BytesIO()
    with zipfile.ZipFile(good, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", base_pkl)
        for k, b in base_s.items():
            z.writestr("archive/data/" + k, b)
        z.writestr("archive/version", b"3\n")
    good = good.getvalue()
    eocd = good.rfind(b"PK\x05\x06")
    cd = struct.unpack("<I", good[eocd + 16:eocd + 20])[0]
    for note, b in [
        ("central directory offset beyond file", good[:eocd + 16] + struct.pack("<I", len(good) + 100) + good[eocd + 20:]),
        ("central directory offset 0", good[:eocd + 16] + struct.pack("<I", 0) + good[eocd + 20:]),
        ("entry count says 65535", good[:eocd + 8] + struct.pack("<HH", 65535, 65535) + good[eocd + 12:]),
        ("entry count says 1", good[:eocd + 8] + struct.pack("<HH", 1, 1) + good[eocd + 12:]),
        ("central directory size says 2^32-1", good[:eocd + 12] + struct.pack("<I", 0xFFFFFFFF) + good[eocd + 16:]),
        ("EOCD comment length lies", good[:eocd + 20] + struct.pack("<H", 500)),
        ("first local header destroyed", b"PK\x03\x04" + b"\xff" * 26 + good[30:]),
        ("data.pkl local header says deflated", good[:8] + b"\x08\x00" + good[10:]),
        ("data.pkl compressed size 2^32-1 in directory",
         good[:cd + 20] + struct.pack("<I", 0xFFFFFFFF) + good[cd + 24:]),
        ("data.pkl uncompressed size 2^32-1 in directory",
         good[:cd + 24] + struct.pack("<I", 0xFFFFFFFF) + good[cd + 28:]),
        ("data.pkl local header offset lies", good[:cd + 42] + struct.pack("<I", 12345) + good[cd + 46:]),
        ("zip64 marker in directory", good[:cd + 20] + b"\xff" * 8 + good[cd + 28:]),
        ("empty zip", b"PK\x05\x06" + b"\x00" * 18),
        ("only the local header of data.pkl", good[:200]),
    ]:
        conv("zip: " + note, lambda p, b=b: write(p, b))
    # duplicate entries and odd layouts
    def dup(path):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            z.writestr("archive/data.pkl", base_pkl)
            for k, b in base_s.items():
                z.writestr("archive/data/" + k, b)
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                z.writestr("archive/data/0", b"\x00" * 4)
                z.writestr("archive/data.pkl", base_pkl)
    conv("zip: duplicate entries", dup)
    conv("zip: two data.pkl at different prefixes", lambda p: pt_zip(p, base_pkl, base_s, extra=[("other/data.pkl", b"\x80\x02}.")]))
    conv("zip: data.pkl deflated (must convert)", lambda p: pt_zip(p, base_pkl, base_s, compress_pkl=True))
    conv("zip: no prefix folder (must convert)", lambda p: pt_zip(p, base_pkl, base_s, prefix=""))
    conv("zip: data.pkl missing", lambda p: pt_zip(p, base_pkl, {}, prefix="archive/") or write(p, open(p, "rb").read().replace(b"data.pkl", b"data.pkX")))
    # random mutations of the whole file and of data.pkl
    pt_bytes = open(os.path.join(TINY, "model.pt"), "rb").read()
    for k in range(40 if QUICK else 100):
        conv(f"random mutation of data.pkl #{k}", lambda p, k=k: pt_zip(p, mutate_bytes_r(base_pkl, lo=2), base_s))
    for k in range(10 if QUICK else 40):
        conv(f"random mutation of the zip container #{k}", lambda p, k=k: write(p, mutate_bytes_r(pt_bytes[:2000], 3) + pt_bytes[2000:-3000] + mutate_bytes_r(pt_bytes[-3000:], 3)))
    for cut in (4, 30, 100, 1000, len(pt_bytes) // 3, len(pt_bytes) - 100, len(pt_bytes) - 22):
        conv(f"truncated at {cut}", lambda p, cut=cut: write(p, pt_bytes[:cut]))
    conv("empty file", lambda p: write(p, b""))
    conv("a directory named model.pt", lambda p: os.makedirs(p))
    conv("legacy non-zip pickle", lambda p: torch.save(sd, p, _use_new_zipfile_serialization=False))


# ---------------------------------------------------------------- flags.json (convert)
def flags_cases():
    base = json.load(open(os.path.join(TINY, "flags.json")))
    edits = [
        ("num_res_blocks", 100000), ("num_res_blocks", -1), ("num_res_blocks", 2 ** 31), ("num_res_blocks", 1e100),
        ("diffusion_steps", 0), ("diffusion_steps", -5), ("diffusion_steps", 2 ** 40), ("noise_schedule", "cubic"),
        ("image_size", 0), ("image_size", -32), ("image_size", 2 ** 31), ("image_size", 33), ("num_channels", 0),
        ("num_channels", 2 ** 30), ("channel_mult", "0,1"), ("channel_mult", "1,2,x"), ("channel_mult", "1," * 50 + "1"),
        ("attention_resolutions", "0"), ("attention_resolutions", "99999999999"), ("attention_resolutions", "-8"),
        ("num_heads", 0), ("num_heads", -3), ("num_head_channels", 7), ("num_head_channels", 0), ("dropout", 2),
        ("dropout", "NaN"), ("learn_sigma", "maybe"), ("class_cond", None), ("num_heads_upsample", 2 ** 31 - 1),
    ]
    def add_flags(note, text):
        def setup(d):
            write(os.path.join(d, "flags.json"), text if isinstance(text, bytes) else text.encode())
        add("flags.json", note, [DIFFSEG, "convert", os.path.join(TINY, "model.pt"), "--flags", "{D}/flags.json", "-o", "{D}/out.safetensors"],
            ["flags.json", "model.pt"], setup)
    for k, v in edits:
        f = dict(base)
        f[k] = v
        add_flags(f"{k} = {v!r}"[:80], json.dumps(f))
    add_flags("top level is a list", "[1, 2]")
    add_flags("duplicate key", json.dumps(base)[:-1] + ', "image_size": 64}')
    add_flags("empty file", "")
    add_flags("10^5 nested arrays", "[" * 100000 + "]" * 100000)
    add_flags("UTF-8 BOM (must convert)", "\ufeff" + json.dumps(base))
    add_flags("invalid UTF-8", b'{"image_size": "\xff\xfe"}')
    add_flags("32 MB of whitespace", " " * (32 << 20) + json.dumps(base))


# ---------------------------------------------------------------- .npy inputs (unet, features, train masks)
def npy_cases():
    x0 = np.load(os.path.join(TINY, "x0.npy"))
    model = os.path.join(BASE, "tiny.safetensors")
    t_ok = os.path.join(TINY, "t.npy")
    x_ok = os.path.join(TINY, "x0.npy")
    xbytes = x0.astype("<f4").tobytes()

    def unet(note, xb=None, tb=None, name="x.npy"):
        def setup(d):
            if xb is not None:
                write(os.path.join(d, "x.npy"), xb)
            if tb is not None:
                write(os.path.join(d, "t.npy"), tb)
        x = "{D}/x.npy" if xb is not None else x_ok
        t = "{D}/t.npy" if tb is not None else t_ok
        add(".npy (x, t, image, noise, mask)", f"unet {name}: {note}", [DIFFSEG, "unet", "--model", model, "--x", x, "--t", t,
            "-o", "{D}/out.npy", "--blocks-dir", "{D}/blocks", "--device", "cpu"], [name], setup)

    S = (2, 3, 32, 32)
    for note, b in [
        ("baseline (must run)", npy(shape=S, data=xbytes)),
        ("v2 header length 2^31", npy(shape=S, data=xbytes, version=2, header_delta=(1 << 31))),
        ("v2 header length 2^32-1", npy(shape=S, data=xbytes, version=2, header_delta=(1 << 32) - 1 - 118)),
        ("v3 header length lies by +1000", npy(shape=S, data=xbytes, version=3, header_delta=1000)),
        ("header length 20 bytes short", npy(shape=S, data=xbytes, header_delta=-20)),
        ("header length 20 bytes long", npy(shape=S, data=xbytes, header_delta=20)),
        ("header length 0", npy(shape=S, data=xbytes, header_delta=-118)),
        ("header without newline", npy(shape=S, data=xbytes, pad_newline=False)),
        ("shape negative", npy(shape=(-2, 3, 32, 32), data=xbytes)),
        ("shape 2^31 batch", npy(shape=(1 << 31, 3, 32, 32), data=xbytes)),
        ("shape 2^40", npy(shape=(1 << 40, 3, 1, 1), data=xbytes)),
        ("shape product overflows int64", npy(shape=(1 << 40, 3, 1 << 40, 1 << 20), data=xbytes)),
        ("shape (0, 3, 32, 32)", npy(shape=(0, 3, 32, 32))),
        ("shape (2, 3, 0, 0)", npy(shape=(2, 3, 0, 0))),
        ("shape (2, 3, 31, 31)", npy(shape=(2, 3, 31, 31), data=np.zeros((2, 3, 31, 31), "<f4").tobytes())),
        ("shape (2, 3, 4096, 4096) truncated", npy(shape=(2, 3, 4096, 4096), data=xbytes)),
        ("shape (1, 3, 8, 8)", npy(shape=(1, 3, 8, 8), data=np.zeros((1, 3, 8, 8), "<f4").tobytes())),
        ("shape 0-d", npy(shape=(), data=b"\x00" * 4)),
        ("shape with a float", npy(raw_dict="{'descr': '<f4', 'fortran_order': False, 'shape': (2.5, 3, 32, 32), }", data=xbytes)),
        ("shape with a name", npy(raw_dict="{'descr': '<f4', 'fortran_order': False, 'shape': (n, 3, 32, 32), }", data=xbytes)),
        ("shape list not tuple", npy(raw_dict="{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3, 32, 32], }", data=xbytes)),
        ("shape unterminated", npy(raw_dict="{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 32, 32, }", data=xbytes)),
        ("second shape key", npy(raw_dict="{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 32, 32), 'shape': (1,), }", data=xbytes)),
        ("descr big-endian", npy(descr=">f4", shape=S, data=x0.astype(">f4").tobytes())),
        ("descr object", npy(descr="|O", shape=S, data=xbytes)),
        ("descr complex", npy(descr="<c8", shape=(2, 3, 32, 16), data=xbytes)),
        ("descr structured", npy(raw_dict="{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2, 3, 32, 32), }", data=xbytes)),
        ("descr float16 (must run)", npy(descr="<f2", shape=S, data=x0.astype("<f2").tobytes())),
        ("descr float64 (must run)", npy(descr="<f8", shape=S, data=x0.astype("<f8").tobytes())),
        ("descr int64", npy(descr="<i8", shape=S, data=x0.astype("<i8").tobytes())),
        ("fortran order", npy(shape=S, data=xbytes, fortran="True")),
        ("fortran order garbage", npy(shape=S, data=xbytes, fortran="Maybe")),
        ("data 4 bytes short", npy(shape=S, data=xbytes[:-4])),
        ("data 1 byte short", npy(shape=S, data=xbytes[:-1])),
        ("data 100 bytes long", npy(shape=S, data=xbytes + b"\x00" * 100)),
        ("NaN in x", npy(shape=S, data=np.where(np.arange(x0.size).reshape(S) == 77, np.nan, x0).astype("<f4").tobytes())),
        ("+Inf in x", npy(shape=S, data=np.where(np.arange(x0.size).reshape(S) == 5, np.inf, x0).astype("<f4").tobytes())),
        ("-Inf in x as float16", npy(descr="<f2", shape=S, data=np.where(np.arange(x0.size).reshape(S) == 5, -np.inf, x0).astype("<f2").tobytes())),
        ("x of 10^30", npy(shape=S, data=np.full(S, 1e30, "<f4").tobytes())),
        ("bad magic", b"\x93NUMPZ" + npy(shape=S, data=xbytes)[6:]),
        ("version 9", npy(shape=S, data=xbytes)[:6] + b"\x09\x00" + npy(shape=S, data=xbytes)[8:]),
        ("only magic", b"\x93NUMPY\x01\x00"),
        ("empty", b""),
        ("header is not latin-1 text", npy(shape=S, data=xbytes)[:10] + bytes(range(128, 246)) + xbytes),
    ]:
        unet(note, xb=b)
    hdr_len = len(npy(shape=S))
    for k in range(40 if QUICK else 110):
        unet(f"random header mutation #{k}", xb=mutate_bytes_r(npy(shape=S, data=b""), lo=6) + xbytes)
    for k in range(10 if QUICK else 30):
        unet(f"random mutation #{k}", xb=mutate_bytes_r(npy(shape=S, data=xbytes)))
    for note, t in [("t = -1", [-1, 5]), ("t = 1000", [1000, 5]), ("t = 2^62", [1 << 62, 3]), ("t = 999 (must run)", [999, 0]),
                    ("t float 1.5", np.array([1.5, 2.0], "<f4")), ("t float NaN", np.array([np.nan, 2.0], "<f4")),
                    ("t float 3.0 (must run)", np.array([3.0, 2.0], "<f4")), ("t bool", np.array([True, False])),
                    ("t shape (2, 1)", np.array([[1], [2]])), ("t length 3", [1, 2, 3]), ("t empty", np.zeros((0,), np.int64)),
                    ("t uint8 (must run)", np.array([1, 2], np.uint8)), ("t int32 -2^31", np.array([-(1 << 31), 1], np.int32))]:
        arr = np.asarray(t)
        if arr.dtype == np.int64 or arr.dtype.kind == "i" and arr.dtype.itemsize == 8:
            arr = arr.astype("<i8")
        unet(note, tb=npy(descr=arr.dtype.str if arr.dtype != bool else "|b1", shape=arr.shape, data=arr.tobytes()), name="t.npy")

    # features: image .npy and noise .npy
    img_ok = np.load(os.path.join(TINY, "x0.npy"))[0]
    def feats(note, img=None, noise=None, name="img.npy", extra=()):
        def setup(d):
            if img is not None:
                write(os.path.join(d, "img.npy"), img)
            if noise is not None:
                write(os.path.join(d, "noise.npy"), noise)
        cmd = [DIFFSEG, "features", "--model", model, "--image", "{D}/img.npy" if img is not None else os.path.join(BASE, "test", "img_0.png"),
               "--steps", "50,150", "--blocks", "2,5", "-o", "{D}/f.npy", "--device", "cpu"]
        if noise is not None:
            cmd += ["--noise", "{D}/noise.npy"]
        for k in range(0, len(extra), 2):
            cmd[cmd.index(extra[k]) + 1] = extra[k + 1]
        add(".npy (x, t, image, noise, mask)", f"features {name}: {note}", cmd, [name], setup)
    I = (3, 32, 32)
    for note, b in [("baseline (must run)", npy(shape=I, data=img_ok.astype("<f4").tobytes())),
                    ("(3, 0, 0)", npy(shape=(3, 0, 0))), ("(3, 1, 1)", npy(shape=(3, 1, 1), data=b"\x00" * 12)),
                    ("(1, 32, 32)", npy(shape=(1, 32, 32), data=b"\x00" * 4096)),
                    ("(3, 31, 31)", npy(shape=(3, 31, 31), data=b"\x00" * (3 * 31 * 31 * 4))),
                    ("(3, 2^31, 2^31)", npy(shape=(3, 1 << 31, 1 << 31))),
                    ("(3, 65536, 65536) truncated", npy(shape=(3, 65536, 65536), data=b"\x00" * 1000)),
                    ("NaN pixel", npy(shape=I, data=np.where(np.arange(3072).reshape(I) == 100, np.nan, img_ok).astype("<f4").tobytes())),
                    ("Inf pixel", npy(shape=I, data=np.where(np.arange(3072).reshape(I) == 3000, np.inf, img_ok).astype("<f4").tobytes())),
                    ("int image", npy(descr="<i8", shape=I, data=np.zeros(I, "<i8").tobytes()))]:
        feats(note, img=b)
    for note, b in [("baseline (must run)", npy(shape=(1, 3, 32, 32), data=np.random.RandomState(0).randn(3072).astype("<f4").tobytes())),
                    ("NaN in noise", npy(shape=(1, 3, 32, 32), data=np.full(3072, np.nan, "<f4").tobytes())),
                    ("noise (3072,)", npy(shape=(3072,), data=np.zeros(3072, "<f4").tobytes())),
                    ("noise (1, 1, 3, 32, 32)", npy(shape=(1, 1, 3, 32, 32), data=np.zeros(3072, "<f4").tobytes())),
                    ("noise (32, 3, 32)", npy(shape=(32, 3, 32), data=np.zeros(3072, "<f4").tobytes())),
                    ("noise (2, 3, 32, 32)", npy(shape=(2, 3, 32, 32), data=np.zeros(6144, "<f4").tobytes())),
                    ("noise shape 2^40", npy(shape=(1 << 40, 3, 32, 32))),
                    ("noise truncated", npy(shape=(1, 3, 32, 32), data=b"\x00" * 100))]:
        feats(note, noise=b, name="noise.npy")
    for note, steps in [("--steps -1", "-1"), ("--steps 1000", "1000"), ("--steps 99999999999", "99999999999"), ("--steps ''", ","),
                        ("--blocks 99", None), ("--blocks -1", None)]:
        extra = ["--steps", steps] if steps else ["--blocks", note.split()[-1]]
        feats(note, extra=extra, name="--steps" if steps else "--blocks")

    # masks through train
    def train_mask(note, mask_bytes, name="img_1.npy"):
        def setup(d):
            import shutil
            shutil.copytree(os.path.join(BASE, "train"), os.path.join(d, "train"))
            write(os.path.join(d, "train", name), mask_bytes)
            write_config(os.path.join(d, "exp.json"), os.path.join(d, "exp"), training_path=os.path.join(d, "train"))
        add(".npy (x, t, image, noise, mask)", f"train mask {name}: {note}", [DIFFSEG, "train", "--config", "{D}/exp.json", "--device", "cpu"],
            [name], setup)
    m_ok = np.load(os.path.join(BASE, "train", "img_1.npy"))
    M = (32, 32)
    for note, arr in [("class 7 of 5", np.where(np.arange(1024).reshape(M) == 40, 7, m_ok)),
                      ("value -1", np.where(np.arange(1024).reshape(M) == 40, -1, m_ok)),
                      ("value 256", np.where(np.arange(1024).reshape(M) == 40, 256, m_ok)),
                      ("value 2^40", np.where(np.arange(1024).reshape(M) == 40, 1 << 40, m_ok)),
                      ("ignore 255 (must run)", np.where(np.arange(1024).reshape(M) == 40, 255, m_ok)),
                      ("float 1.5", np.where(np.arange(1024).reshape(M) == 40, 1.5, m_ok.astype(float))),
                      ("float NaN", np.where(np.arange(1024).reshape(M) == 40, np.nan, m_ok.astype(float))),
                      ("float whole numbers (must run)", m_ok.astype("<f4")),
                      ("uint8 (must run)", m_ok.astype(np.uint8)),
                      ("shape (16, 16)", m_ok[:16, :16]), ("shape (0, 0)", np.zeros((0, 0), np.int64)),
                      ("shape (1, 32, 32)", m_ok[None]), ("shape (1024,)", m_ok.reshape(-1)),
                      ("shape (64, 64) (must run, resized)", np.kron(m_ok, np.ones((2, 2), np.int64))),
                      ("bool", m_ok > 0)]:
        arr = np.ascontiguousarray(arr)
        descr = {np.dtype(np.int64): "<i8", np.dtype(np.float64): "<f8", np.dtype(np.float32): "<f4", np.dtype(np.uint8): "|u1",
                 np.dtype(bool): "|b1"}[arr.dtype]
        train_mask(note, npy(descr=descr, shape=arr.shape, data=arr.tobytes()))
    train_mask("mask shape 2^31 x 2^31", npy(descr="<i8", shape=(1 << 31, 1 << 31)))
    train_mask("mask truncated", npy(descr="<i8", shape=M, data=b"\x00" * 100))
    for k in range(10 if QUICK else 25):
        train_mask(f"random mutation #{k}", mutate_bytes_r(npy(descr="<i8", shape=M, data=m_ok.astype("<i8").tobytes()), lo=6))


# ---------------------------------------------------------------- model .safetensors (unet)
def model_st_cases():
    path = os.path.join(BASE, "tiny.safetensors")
    header, data = st_read(path)
    raw = open(path, "rb").read()
    names = [k for k in header if k != "__metadata__"]
    first = min(names, key=lambda n: header[n]["data_offsets"][0])

    def unet(note, b):
        def setup(d):
            write(os.path.join(d, "m.safetensors"), b)
        add("model .safetensors", note, [DIFFSEG, "unet", "--model", "{D}/m.safetensors", "--x", os.path.join(TINY, "x0.npy"),
            "--t", os.path.join(TINY, "t.npy"), "-o", "{D}/out.npy", "--device", "cpu"], ["m.safetensors"], setup)

    def edited(fn):
        h = json.loads(json.dumps(header))
        fn(h)
        return st_bytes(h, data)
    flags = json.loads(header["__metadata__"]["flags"])
    def meta_flags(**kw):
        f = dict(flags)
        f.update(kw)
        return lambda h: h["__metadata__"].update(flags=json.dumps(f))
    for note, fn in [
        ("baseline (must run)", lambda h: None),
        ("__metadata__ is a list", lambda h: h.update(__metadata__=[1, 2])),
        ("__metadata__ is a string", lambda h: h.update(__metadata__="x")),
        ("__metadata__ value is a number", lambda h: h["__metadata__"].update(format=3)),
        ("__metadata__ value is an object", lambda h: h["__metadata__"].update(flags={"a": 1})),
        ("__metadata__ null", lambda h: h.update(__metadata__=None)),
        ("no flags", lambda h: h["__metadata__"].pop("flags")),
        ("flags not JSON", lambda h: h["__metadata__"].update(flags="{nope")),
        ("flags num_res_blocks 100000", meta_flags(num_res_blocks=100000)),
        ("flags num_res_blocks 2^31", meta_flags(num_res_blocks=2 ** 31)),
        ("flags diffusion_steps 0", meta_flags(diffusion_steps=0)),
        ("flags noise_schedule cubic", meta_flags(noise_schedule="cubic")),
        ("flags image_size 2^30", meta_flags(image_size=2 ** 30)),
        ("flags num_channels 2^20", meta_flags(num_channels=2 ** 20)),
        ("flags channel_mult 1000 levels", meta_flags(channel_mult=",".join(["1"] * 1000))),
        ("flags learn_sigma flipped", meta_flags(learn_sigma=not flags.get("learn_sigma", False))),
        ("tensor dtype F16 (same bytes)", lambda h: h[first].update(dtype="F16")),
        ("tensor dtype I64", lambda h: h[first].update(dtype="I64")),
        ("tensor dtype unknown", lambda h: h[first].update(dtype="Q7")),
        ("tensor dtype missing", lambda h: h[first].pop("dtype")),
        ("shape negative", lambda h: h[first].update(shape=[-1] + h[first]["shape"][1:])),
        ("shape 10^11", lambda h: h[first].update(shape=[10 ** 11])),
        ("shape 2^62 x 4", lambda h: h[first].update(shape=[2 ** 62, 4])),
        ("shape float", lambda h: h[first].update(shape=[1.5])),
        ("shape is a string", lambda h: h[first].update(shape="(1,)")),
        ("offsets reversed", lambda h: h[first].update(data_offsets=h[first]["data_offsets"][::-1])),
        ("offsets negative", lambda h: h[first].update(data_offsets=[-8, h[first]["data_offsets"][1] - 8])),
        ("offsets beyond file", lambda h: h[first].update(data_offsets=[len(data), len(data) + h[first]["data_offsets"][1]])),
        ("offsets 2^63", lambda h: h[first].update(data_offsets=[2 ** 63 - 8, 2 ** 63 - 1])),
        ("offsets three values", lambda h: h[first].update(data_offsets=[0, 4, 8])),
        ("offsets overlap the next tensor", lambda h: h[names[1]].update(data_offsets=[0, h[names[1]]["data_offsets"][1] - h[names[1]]["data_offsets"][0]])),
        ("tensor entry is a list", lambda h: h.update({first: [1, 2]})),
        ("tensor entry null", lambda h: h.update({first: None})),
        ("extra tensor beyond the model", lambda h: h.update({"extra.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})),
        ("empty tensor name", lambda h: h.update({"": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})),
    ]:
        unet(note, edited(fn))
    hb = json.dumps(header).encode()
    pad = lambda b: b + b" " * ((8 - len(b) % 8) % 8)
    dup = pad(hb[:-1] + b', "' + first.encode() + b'": ' + json.dumps(header[first]).encode() + b"}")
    for note, b in [
        ("duplicate tensor key", struct.pack("<Q", len(dup)) + dup + data),
        ("duplicate __metadata__", struct.pack("<Q", len(pad(hb[:-1] + b', "__metadata__": {}}'))) + pad(hb[:-1] + b', "__metadata__": {}}') + data),
        ("header length 0", struct.pack("<Q", 0) + raw[8:]),
        ("header length 2^63-1", struct.pack("<Q", (1 << 63) - 1) + raw[8:]),
        ("header length negative", struct.pack("<q", -16) + raw[8:]),
        ("header length past the file", struct.pack("<Q", len(raw)) + raw[8:]),
        ("header length 8 short", struct.pack("<Q", struct.unpack("<Q", raw[:8])[0] - 8) + raw[8:]),
        ("header not JSON", struct.pack("<Q", 16) + b"not json at all!" + data),
        ("header JSON array", struct.pack("<Q", 8) + b"[1,2,3] " + data),
        ("header 10^5 nested", struct.pack("<Q", 200000) + b"[" * 100000 + b"]" * 100000 + data),
        ("header invalid UTF-8", struct.pack("<Q", 8) + b'{"\xff":1}' + data),
        ("truncated data", raw[:-1000]),
        ("truncated header", raw[:100]),
        ("7 bytes", raw[:7]),
        ("data has 8 extra bytes", raw + b"\x00" * 8),
        ("NaN weights", st_bytes(header, np.full(len(data) // 4, np.nan, "<f4").tobytes())),
        ("one Inf weight", st_bytes(header, data[:400] + struct.pack("<f", np.inf) + data[404:])),
    ]:
        unet(note, b)
    for k in range(20 if QUICK else 40):
        n = struct.unpack("<Q", raw[:8])[0]
        unet(f"random header mutation #{k}", raw[:8] + mutate_bytes_r(raw[8:8 + n]) .ljust(n)[:n] + raw[8 + n:])
    for k in range(5 if QUICK else 15):
        unet(f"random mutation #{k}", mutate_bytes_r(raw))


# ---------------------------------------------------------------- ensemble .safetensors (evaluate, predict)
def ensemble_cases():
    ens = os.path.join(BASE, "exp", "50_150_2_5_7", "ensemble.safetensors")
    header, data = st_read(ens)
    meta = header["__metadata__"]

    def run_eval(note, fn=None, raw=None, cfg=None, cmd="evaluate"):
        def setup(d):
            copy_exp(d)
            p = os.path.join(d, "exp", "50_150_2_5_7", "ensemble.safetensors")
            if raw is not None:
                write(p, raw)
            else:
                h = json.loads(json.dumps(header))
                fn(h)
                write(p, st_bytes(h, h.pop("__data__", data)))
            write_config(os.path.join(d, "exp.json"), os.path.join(d, "exp"), **(cfg or {}))
        args = [DIFFSEG, cmd, "--config", "{D}/exp.json", "--device", "cpu"]
        if cmd == "predict":
            args += ["--input", os.path.join(BASE, "test"), "-o", "{D}/pred"]
        add("ensemble .safetensors", f"{cmd}: {note}", args, ["ensemble.safetensors", "exp.json"], setup)

    def m(**kw):
        return lambda h: h["__metadata__"].update({k: str(v) for k, v in kw.items()})
    for note, fn in [("baseline (must run)", lambda h: None), ("members -1", m(members=-1)), ("members 10^11", m(members=10 ** 11)),
                     ("members 0", m(members=0)), ("members 1 of 2", m(members=1)), ("members 3 of 2", m(members=3)),
                     ("members abc", m(members="abc")), ("hidden -1,-1", m(hidden="-1,-1")), ("hidden 10^11,1", m(hidden=f"{10**11},1")),
                     ("hidden 1", m(hidden="1")), ("hidden empty", m(hidden="")), ("hidden 1,2,3", m(hidden="1,2,3")),
                     ("in_features -1", m(in_features=-1)), ("in_features 10^11", m(in_features=10 ** 11)),
                     ("in_features 321", m(in_features=321)), ("classes -1", m(classes=-1)), ("classes 10^11", m(classes=10 ** 11)),
                     ("classes 6", m(classes=6)), ("format missing", lambda h: h["__metadata__"].pop("format")),
                     ("members missing", lambda h: h["__metadata__"].pop("members")), ("hidden missing", lambda h: h["__metadata__"].pop("hidden")),
                     ("num_batches_tracked abc", m(num_batches_tracked="abc")),
                     ("steps edited to 50,250", m(steps="50,250")), ("blocks edited to 2,5,8", m(blocks="2,5,8")),
                     ("number_class edited to 6", m(number_class=6)), ("image_size edited to 64", m(image_size=64)),
                     ("ignore_label edited to 0", m(ignore_label=0)),
                     ("a member tensor missing", lambda h: h.pop("member.1.layers.6.bias")),
                     ("a member tensor reshaped", lambda h: h["member.0.layers.6.bias"].update(shape=[1, 5])),
                     ("all weights NaN", lambda h: h.update(__data__=np.full(len(data) // 4, np.nan, "<f4").tobytes())),
                     ]:
        run_eval(note, fn)
    run_eval("trained with 2 members, config says 5", lambda h: None, cfg={"model_num": 5})
    run_eval("predict: members 10^11", m(members=10 ** 11), cmd="predict")
    run_eval("predict: all weights NaN", lambda h: h.update(__data__=np.full(len(data) // 4, np.nan, "<f4").tobytes()), cmd="predict")
    run_eval("predict: baseline (must run)", lambda h: None, cmd="predict")
    run_eval("truncated", raw=open(ens, "rb").read()[:-500])
    run_eval("empty", raw=b"")
    raw = open(ens, "rb").read()
    for k in range(6):
        run_eval(f"random mutation #{k}", raw=mutate_bytes_r(raw[:600]) + raw[600:])


# ---------------------------------------------------------------- experiment JSON (train, evaluate, predict)
def config_cases():
    def cfg(note, over=None, text=None, cmd="train", drop=None):
        def setup(d):
            if text is not None:
                write(os.path.join(d, "exp.json"), text if isinstance(text, bytes) else text.encode())
            else:
                c = base_config(os.path.join(d, "exp"))
                c.update(over or {})
                for k in drop or []:
                    c.pop(k, None)
                write(os.path.join(d, "exp.json"), json.dumps(c).encode())
            if cmd != "train":
                copy_exp(d)
        args = [DIFFSEG, cmd, "--config", "{D}/exp.json", "--device", "cpu"]
        if cmd == "predict":
            args += ["--input", os.path.join(BASE, "test"), "-o", "{D}/pred"]
        # A path the config names may be the file the refusal names.
        paths = [v for v in (over or {}).values() if isinstance(v, str) and v.startswith("/")]
        # evaluate and predict may find the ensemble is not the config's.
        paths += ["ensemble.safetensors"] if cmd != "train" else []
        add("experiment JSON", f"{cmd}: {note}", args, ["exp.json"] + paths, setup)

    big = [-1, 0, 2 ** 31, 2 ** 63, 10 ** 11, 1.5, "7", None, [1], True, 1e300, -2 ** 31]
    for key in ("number_class", "ignore_label", "model_num", "batch_size", "max_epochs", "training_number", "testing_number", "seed"):
        for v in big:
            cfg(f"{key} = {v!r}", {key: v})
    for key, vals in {
        "dim": [[0, 0, 320], [32, 32, -1], [32, 32, 99999999999], [100000, 100000, 320], [2 ** 31, 2 ** 31, 320], [32, 32],
                [32, 64, 320], [32, 32, 321], [48, 48, 320], [4, 4, 320], "32,32,320", [32.5, 32, 320]],
        "steps": [[-1], [1000], [2 ** 40], [], [50, 50], [999] * 1000, [1.5], ["50"], [50, 150, 2 ** 31]],
        "blocks": [[99], [-1], [], [2, 2], [2 ** 31], [2, 5, 17]],
        "training_path": ["/proc/self", "/", "/nonexistent", "/etc/passwd", "", "/dev/null"],
        "testing_path": ["/proc/self", "/nonexistent"],
        "model_path": ["/nonexistent.safetensors", os.path.join(TINY, "model.pt"), "/", "/dev/zero", os.path.join(TINY, "x0.npy")],
        "noise_path": ["/nonexistent.npy", os.path.join(TINY, "t.npy"), "/dev/zero", os.path.join(TINY, "noise.npy"), "/"],
        "exp_dir": ["/proc/self/x", "", "/dev/null/x", "/sys/x"],
        "feature_path": ["x", 3], "feature_storage": ["fp8"], "share_noise": ["yes", None], "upsample_mode": ["nearest"],
        "input_activations": [True], "category": [3], "unknown_key": [1],
    }.items():
        for v in vals:
            cfg(f"{key} = {v!r}"[:90], {key: v})
    for key in ("exp_dir", "model_path", "training_path", "testing_path", "dim", "steps", "blocks", "number_class", "ignore_label"):
        cfg(f"{key} missing", drop=[key])
    for note, text in [("top level is a list", "[1]"), ("empty", ""), ("not JSON", "{nope"), ("NaN literal", '{"seed": NaN}'),
                       ("duplicate key", json.dumps(base_config("x"))[:-1] + ', "seed": 3}'), ("10^5 nested", "[" * 100000 + "]" * 100000),
                       ("invalid UTF-8", b'{"exp_dir": "\xff"}'), ("64 MB string", '{"category": "' + "a" * (64 << 20) + '"}'),
                       ("comments", "// hi\n" + json.dumps(base_config("x"))), ("trailing comma", json.dumps(base_config("x"))[:-1] + ",}")]:
        cfg(note, text=text)
    for cmd in ("evaluate", "predict"):
        for note, over in [("baseline (must run)", {}), ("steps [-1]", {"steps": [-1]}), ("model_num 100000", {"model_num": 100000}),
                           ("number_class 6", {"number_class": 6}), ("dim [64, 64, 320]", {"dim": [64, 64, 320]}),
                           ("testing_path /proc/self", {"testing_path": "/proc/self"}), ("noise_path /dev/zero", {"noise_path": "/dev/zero"})]:
            cfg(note, over, cmd=cmd)


# ---------------------------------------------------------------- images and PNG masks
def image_cases():
    model = os.path.join(BASE, "tiny.safetensors")
    r = np.random.RandomState(5)
    rgb = (r.rand(32, 32, 3) * 255).astype(np.uint8)
    good = png_rgb(rgb)

    def feats(note, b, ext="png"):
        def setup(d):
            write(os.path.join(d, f"img.{ext}"), b)
        add("images and PNG masks", f"features: {note}", [DIFFSEG, "features", "--model", model, "--image", f"{{D}}/img.{ext}",
            "--steps", "50", "--blocks", "2", "-o", "{D}/f.npy", "--device", "cpu"], [f"img.{ext}"], setup)

    ihdr = lambda w, h, bd=8, ct=2, extra=b"": struct.pack(">IIBBBBB", w, h, bd, ct, 0, 0, 0) + extra
    for note, b in [
        ("baseline (must run)", good),
        ("IHDR 0x0", png(0, 0, ihdr=ihdr(0, 0), idat=zlib.compress(b""))),
        ("IHDR 2^32-1 wide", png(1, 1, ihdr=ihdr(0xFFFFFFFF, 1), idat=zlib.compress(b"\x00" * 4))),
        ("IHDR 2^31 x 2^31", png(1, 1, ihdr=ihdr(1 << 31, 1 << 31), idat=zlib.compress(b"\x00" * 4))),
        ("IHDR 65535 x 65535, tiny IDAT", png(1, 1, ihdr=ihdr(65535, 65535), idat=zlib.compress(b"\x00" * 4))),
        ("IHDR bit depth 7", png(32, 32, rgb.tobytes(), ihdr=ihdr(32, 32, bd=7))),
        ("IHDR colour type 5", png(32, 32, rgb.tobytes(), ihdr=ihdr(32, 32, ct=5))),
        ("IHDR interlace 9", png(32, 32, rgb.tobytes(), ihdr=struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 9))),
        ("IHDR short", png(32, 32, rgb.tobytes(), ihdr=b"\x00\x00\x00\x20")),
        ("IDAT not zlib", png(32, 32, idat=b"this is not zlib data at all" * 10)),
        ("IDAT truncated zlib", png(32, 32, idat=zlib.compress(b"\x00" * 3104)[:20])),
        ("IDAT inflates to 1 GiB", png(32, 32, idat=zeros_z(1 << 30))),
        ("IDAT bad filter byte", png(32, 32, idat=zlib.compress((b"\x09" + b"\x00" * 96) * 32))),
        ("bad CRC", png(32, 32, rgb.tobytes(), crc_ok=False)),
        ("no IEND", good[:-12]),
        ("truncated in IDAT", good[:len(good) // 2]),
        ("signature only", good[:8]),
        ("empty", b""),
        ("text named .png", b"hello, not an image"),
        ("non-square 48x32", png_rgb(np.zeros((32, 48, 3), np.uint8))),
        ("1x1 (features needs divisible)", png_rgb(np.zeros((1, 1, 3), np.uint8))),
        ("20000x20000 valid grayscale (~400 KB)", png(20000, 20000, color_type=0, idat=zeros_z(20001 * 20000))),
        ("16-bit RGB (must run)", png(32, 32, np.repeat(rgb.astype(">u2") * 257, 1).tobytes(), 2, 16)),
        ("palette without PLTE", png(32, 32, bytes(1024), 3, 8)),
        ("huge tEXt chunk length", good[:33] + struct.pack(">I", 0x7FFFFFFF) + b"tEXt" + good[33:]),
        ("chunk length 2^32-1", good[:33] + struct.pack(">I", 0xFFFFFFFF) + b"zzzz" + good[33:]),
        ("JPEG truncated", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xdb\x00\x43\x00" + b"\x10" * 20),
        ("GIF header only", b"GIF89a\x20\x00\x20\x00\x00\x00\x00"),
        ("GIF 65535x65535 screen", b"GIF89a\xff\xff\xff\xff\x00\x00\x00,\x00\x00\x00\x00\xff\xff\xff\xff\x00\x02\x02D\x01\x00;"),
        ("BMP magic", b"BM" + b"\x00" * 60),
    ]:
        feats(note, b)
    for k in range(10 if QUICK else 25):
        feats(f"random mutation #{k}", mutate_bytes_r(good, lo=8))

    def train_with(note, setup_fn, names, cmd="train"):
        def setup(d):
            import shutil
            shutil.copytree(os.path.join(BASE, "train"), os.path.join(d, "train"))
            shutil.copytree(os.path.join(BASE, "test"), os.path.join(d, "test"))
            setup_fn(d)
            write_config(os.path.join(d, "exp.json"), os.path.join(d, "exp"), training_path=os.path.join(d, "train"),
                         testing_path=os.path.join(d, "test"))
            if cmd != "train":
                shutil.copytree(os.path.join(BASE, "exp"), os.path.join(d, "exp"))
        args = [DIFFSEG, cmd, "--config", "{D}/exp.json", "--device", "cpu"]
        if cmd == "predict":
            args += ["--input", "{D}/test", "-o", "{D}/pred"]
        add("images and PNG masks", f"{cmd}: {note}", args, names, setup)

    def png_mask(arr, bd=8, name="img_1", folder="train"):
        def f(d):
            os.remove(os.path.join(d, folder, name + ".npy"))
            write(os.path.join(d, folder, name + "_mask.png"), png_gray(arr, bd) if not isinstance(arr, bytes) else arr)
        return f
    m = np.load(os.path.join(BASE, "train", "img_1.npy"))
    for note, arr, bd in [("8-bit gray mask (must run)", m, 8), ("16-bit mask with 258", np.where(m == 1, 258, m), 16),
                          ("16-bit mask with small values", m, 16), ("8-bit mask with class 9", np.where(m == 1, 9, m), 8),
                          ("mask 16x16", m[:16, :16], 8)]:
        train_with(note, png_mask(arr, bd), ["img_1_mask.png"])
    train_with("RGB mask", png_mask(png_rgb(np.stack([m * 40] * 3, -1))), ["img_1_mask.png"])
    train_with("colour RGB mask", png_mask(png_rgb(np.stack([m * 40, m, m], -1))), ["img_1_mask.png"])
    train_with("palette mask", png_mask(png(32, 32, m.astype(np.uint8).tobytes(), 3, 8,
                                            extra=b"\x00\x00\x00\x30PLTE" + bytes(48) + struct.pack(">I", zlib.crc32(b"PLTE" + bytes(48))))),
               ["img_1_mask.png"])
    train_with("mask IDAT not zlib", png_mask(png(32, 32, color_type=0, idat=b"garbage" * 9)), ["img_1_mask.png"])
    train_with("mask 20000x20000", png_mask(png(20000, 20000, color_type=0, idat=zeros_z(20001 * 20000))),
               ["img_1_mask.png"])
    train_with("image 20000x20000", lambda d: write(os.path.join(d, "train", "img_2.png"),
                                                   png(20000, 20000, color_type=0, idat=zeros_z(20001 * 20000))),
               ["img_2.png"])
    train_with("image not zlib", lambda d: write(os.path.join(d, "train", "img_2.png"), png(32, 32, idat=b"garbage" * 9)), ["img_2.png"])
    train_with("image non-square", lambda d: write(os.path.join(d, "train", "img_2.png"), png_rgb(np.zeros((32, 40, 3), np.uint8))),
               ["img_2.png", "img_2.npy"])
    train_with("image 64x64 with 32x32 mask", lambda d: write(os.path.join(d, "train", "img_2.png"), png_rgb(np.zeros((64, 64, 3), np.uint8))),
               ["img_2.png", "img_2.npy"])
    train_with("image without mask", lambda d: os.remove(os.path.join(d, "train", "img_2.npy")), ["img_2.png"])
    # the 4th image is bad in a way only decoding finds: outputs of the first three must not stay
    bad4 = png(32, 32, idat=zlib.compress(b"\x00" * 3104)[:30])
    for cmd in ("evaluate", "predict"):
        train_with("4th image's IDAT cut short", lambda d: write(os.path.join(d, "test", "img_3.png"), bad4), ["img_3.png"], cmd)
        train_with("4th image's IDAT not zlib", lambda d: write(os.path.join(d, "test", "img_3.png"), png(32, 32, idat=b"garbage" * 9)),
                   ["img_3.png"], cmd)
        train_with("4th image 20000x20000", lambda d: write(os.path.join(d, "test", "img_3.png"),
                                                           png(20000, 20000, color_type=0, idat=zeros_z(20001 * 20000))),
                   ["img_3.png"], cmd)
        train_with("baseline (must run)", lambda d: None, [], cmd)
    train_with("evaluate: 4th mask with class 9", png_mask(np.where(m == 1, 9, m), 8, name="img_3", folder="test"), ["img_3_mask.png"], "evaluate")
    train_with("evaluate: 4th mask bad IDAT", png_mask(png(32, 32, color_type=0, idat=b"garbage" * 9), name="img_3", folder="test"),
               ["img_3_mask.png"], "evaluate")
    def out_is_file(d):
        write(os.path.join(d, "pred"), b"a file")
    train_with("-o names an existing file", out_is_file, ["pred"], "predict")
    for k in range(5 if QUICK else 20):
        train_with(f"random mutation of a training image #{k}",
                   lambda d, k=k: write(os.path.join(d, "train", "img_2.png"), mutate_bytes_r(open(os.path.join(BASE, "train", "img_2.png"), "rb").read(), lo=8)),
                   ["img_2.png"])


if __name__ == "__main__":
    os.makedirs(WORK, exist_ok=True)
    if not os.path.exists(os.path.join(BASE, "exp", "50_150_2_5_7", "ensemble.safetensors")):
        setup_base()
    from hostile_commands import command_cases  # noqa: E402
    groups = [pt_cases, flags_cases, npy_cases, model_st_cases, ensemble_cases, config_cases, image_cases] + command_cases(globals())
    only = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--only=")), None)
    for f in groups:
        if only and f.__name__ not in only:
            continue
        f()
        print(f"{f.__name__}: {len(cases)} cases so far", flush=True)
    with open(os.path.join(WORK, "cases.jsonl"), "w") as out:
        for c in cases:
            out.write(json.dumps(c) + "\n")
