#!/usr/bin/env python3
"""Writes tests/fixtures/hostile: small files for every reader, each named for what it tests.

    /usr/bin/python3 tests/hostile/make_corpus.py

  ok_*   valid input the reader must accept
  bad_*  malformed input the reader must refuse with a DiffSegException naming the file
  any_*  input the reader may accept or refuse, but only cleanly (e.g. a PNG with a bad CRC)

expect.tsv adds, for some files, a phrase the refusal must contain. HostileCorpusTests reads every file with its reader;
the property tests and the SharpFuzz targets mutate the ok_ files. Files found by fuzzing are kept as crash_* (renamed
crash_bad_* once the reader must refuse them); regeneration keeps them.
Deterministic: the same script writes the same bytes (torch's own pickles aside, which are stable for one version).
"""
import collections
import io
import re
import json
import os
import struct
import sys
import zipfile
import zlib

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostile_formats import *  # noqa: E402,F403

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "hostile")
expect = []
GADGET = "/tmp/diffseg_pickle_gadget_ran"


def put(folder, name, data, phrase=None):
    stem, ext = os.path.splitext(name)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_") + ext
    d = os.path.join(ROOT, folder)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    if phrase:
        expect.append(f"{folder}/{name}\t{phrase}")


def npy_corpus():
    x = np.arange(24, dtype="<f4").reshape(2, 3, 4) / 7
    xb = x.tobytes()
    S = (2, 3, 4)
    put("npy", "ok_f4.npy", npy(shape=S, data=xb))
    put("npy", "ok_f2.npy", npy(descr="<f2", shape=S, data=x.astype("<f2").tobytes()))
    put("npy", "ok_f8.npy", npy(descr="<f8", shape=S, data=x.astype("<f8").tobytes()))
    put("npy", "ok_i8.npy", npy(descr="<i8", shape=(5,), data=np.arange(5, dtype="<i8").tobytes()))
    put("npy", "ok_i4.npy", npy(descr="<i4", shape=(5,), data=np.arange(5, dtype="<i4").tobytes()))
    put("npy", "ok_u1.npy", npy(descr="|u1", shape=(2, 2), data=bytes([0, 1, 2, 255])))
    put("npy", "ok_b1.npy", npy(descr="|b1", shape=(3,), data=bytes([0, 1, 1])))
    put("npy", "ok_v2.npy", npy(shape=S, data=xb, version=2))
    put("npy", "ok_v3.npy", npy(shape=S, data=xb, version=3))
    put("npy", "ok_zero_dim.npy", npy(shape=(0, 3)))
    put("npy", "ok_scalar.npy", npy(shape=(), data=b"\x00\x00\x80\x3f"))
    put("npy", "ok_nan.npy", npy(shape=(2,), data=np.array([np.nan, 1], "<f4").tobytes()))
    with open(os.path.join(ROOT, "npy", "ok_numpy_save.npy"), "wb") as f:
        np.save(f, x)
    put("npy", "bad_v2_header_length_2p31.npy", npy(shape=S, data=xb, version=2, header_delta=1 << 31), "header length")
    put("npy", "bad_v2_header_length_2p32m1.npy", npy(shape=S, data=xb, version=2, header_delta=(1 << 32) - 1 - 118), "header length")
    put("npy", "bad_header_20_short.npy", npy(shape=S, data=xb, header_delta=-20), "newline")
    put("npy", "bad_header_20_long.npy", npy(shape=S, data=xb, header_delta=20))
    put("npy", "bad_header_no_newline.npy", npy(shape=S, data=xb, pad_newline=False), "newline")
    put("npy", "bad_shape_negative.npy", npy(shape=(-2, 3, 4), data=xb), "negative")
    put("npy", "bad_shape_2p31.npy", npy(shape=(1 << 31, 3, 4), data=xb), "2147483647")
    put("npy", "bad_shape_2p40.npy", npy(shape=(1 << 40, 3), data=xb))
    put("npy", "bad_shape_product_overflow.npy", npy(shape=(1 << 30, 1 << 30, 1 << 30, 1 << 30), data=xb), "truncated")
    put("npy", "bad_shape_huge_zero.npy", npy(shape=(0, 1 << 40), data=b""))
    put("npy", "bad_shape_20_digits.npy", npy(raw_dict="{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }"))
    put("npy", "bad_shape_float.npy", npy(raw_dict="{'descr': '<f4', 'fortran_order': False, 'shape': (2.5, 3, 4), }", data=xb))
    put("npy", "bad_shape_name.npy", npy(raw_dict="{'descr': '<f4', 'fortran_order': False, 'shape': (n, 3, 4), }", data=xb))
    put("npy", "bad_shape_list.npy", npy(raw_dict="{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3, 4], }", data=xb))
    put("npy", "bad_shape_unterminated.npy", npy(raw_dict="{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4, }", data=xb))
    put("npy", "bad_duplicate_key.npy", npy(raw_dict="{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), 'shape': (1,), }",
                                            data=xb), "twice")
    put("npy", "bad_missing_key.npy", npy(raw_dict="{'descr': '<f4', 'shape': (2, 3, 4), }", data=xb))
    put("npy", "bad_unknown_key.npy", npy(raw_dict="{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), 'x': 1, }", data=xb))
    put("npy", "bad_descr_big_endian.npy", npy(descr=">f4", shape=S, data=x.astype(">f4").tobytes()), "dtype")
    put("npy", "bad_descr_object.npy", npy(descr="|O", shape=S, data=xb), "dtype")
    put("npy", "bad_descr_complex.npy", npy(descr="<c8", shape=(2, 3, 2), data=xb), "dtype")
    put("npy", "bad_descr_structured.npy", npy(raw_dict="{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2, 3, 4), }", data=xb))
    put("npy", "bad_fortran.npy", npy(shape=S, data=xb, fortran="True"), "Fortran")
    put("npy", "bad_fortran_garbage.npy", npy(shape=S, data=xb, fortran="Maybe"))
    put("npy", "bad_data_short.npy", npy(shape=S, data=xb[:-1]), "truncated")
    put("npy", "bad_data_long.npy", npy(shape=S, data=xb + bytes(100)), "after")
    put("npy", "bad_bool_byte_2.npy", npy(descr="|b1", shape=(3,), data=bytes([0, 2, 1])), "bool")
    put("npy", "bad_magic.npy", b"\x93NUMPZ" + npy(shape=S, data=xb)[6:], "magic")
    put("npy", "bad_version_9.npy", npy(shape=S, data=xb)[:6] + b"\x09\x00" + npy(shape=S, data=xb)[8:], "version")
    put("npy", "bad_only_magic.npy", b"\x93NUMPY\x01\x00")
    put("npy", "bad_empty.npy", b"", "empty")
    put("npy", "bad_header_binary.npy", npy(shape=S, data=xb)[:10] + bytes(range(128, 246)) + xb)


def pt_corpus():
    g = torch.Generator().manual_seed(0)
    sd = collections.OrderedDict([("a.weight", torch.randn(4, 3, generator=g)), ("a.bias", torch.randn(4, generator=g)),
                                  ("b.weight", torch.randn(2, 2, generator=g)), ("c.weight", torch.randn(3, 2, 2, generator=g))])
    names = list(sd)

    def spec(mod=None):
        tensors, storages = collections.OrderedDict(), {}
        for k, (name, t) in enumerate(sd.items()):
            s = {"type": "FloatStorage", "key": str(k), "numel": t.numel(), "offset": 0, "shape": list(t.shape),
                 "stride": list(t.contiguous().stride()), "bytes": t.contiguous().numpy().tobytes(), "fn": None}
            if mod:
                mod(name, s)
            if not s.get("drop"):
                storages[s["key"]] = s["bytes"]
            tensors[name] = FakeTensor(FakeStorage(s["type"], s["key"], s["numel"]), s["offset"], s["shape"], s["stride"], s["fn"])
        return tensors, storages

    def zipped(pkl, storages, **kw):
        buf = io.BytesIO()
        pt_zip(buf, pkl, storages, **kw)
        return buf.getvalue()

    def saved(obj, **kw):
        buf = io.BytesIO()
        torch.save(obj, buf, **kw)
        return buf.getvalue()
    t0, s0 = spec()
    pkl0 = pickle_state(t0)
    put("pt", "ok_rebuilt.pt", zipped(pkl0, s0))
    put("pt", "ok_torch_save.pt", saved(sd))
    put("pt", "ok_noncontiguous.pt", saved(collections.OrderedDict((k, v.transpose(0, 1) if v.dim() >= 2 else v) for k, v in sd.items())))
    put("pt", "ok_fp16_bf16_fp64.pt", saved(collections.OrderedDict((k, [v.half(), v.bfloat16(), v.double(), v][i % 4])
                                                                    for i, (k, v) in enumerate(sd.items()))))
    put("pt", "ok_wrapped.pt", saved({"state_dict": sd, "epoch": 3}))
    put("pt", "ok_dataparallel.pt", saved(collections.OrderedDict(("module." + k, v) for k, v in sd.items())))
    big = torch.randn(20, generator=g)
    put("pt", "ok_shared_storage.pt", saved(collections.OrderedDict([("x", big[2:8]), ("y", big[10:20].view(2, 5)), ("z", big[::4])])))
    put("pt", "ok_broadcast_stride0.pt", saved(collections.OrderedDict([("x", torch.randn(3, generator=g).expand(4, 3))])))
    put("pt", "ok_deflated_pkl.pt", zipped(pkl0, s0, compress_pkl=True))
    put("pt", "ok_no_prefix.pt", zipped(pkl0, s0, prefix=""))
    first = names[0]
    for name, fn, phrase in [
        ("negative_offset", lambda n, s: s.update(offset=-4) if n == first else None, "offset"),
        ("huge_offset", lambda n, s: s.update(offset=1 << 40) if n == first else None, "past the end"),
        ("negative_stride", lambda n, s: s.update(stride=[-1, 1]) if n == first else None, "strides"),
        ("huge_stride", lambda n, s: s.update(stride=[1 << 40, 1]) if n == first else None, "past the end"),
        ("stride_rank_short", lambda n, s: s.update(stride=[1]) if n == first else None, "strides"),
        ("stride_rank_long", lambda n, s: s.update(stride=[3, 1, 1]) if n == first else None, "strides"),
        ("stride_reaches_past", lambda n, s: s.update(stride=[4, 1]) if n == first else None, "past the end"),
        ("numel_double", lambda n, s: s.update(numel=s["numel"] * 2) if n == first else None, "record says"),
        ("numel_small", lambda n, s: s.update(numel=3) if n == first else None, "record says"),
        ("numel_negative", lambda n, s: s.update(numel=-1) if n == first else None, "size"),
        ("numel_2p62", lambda n, s: s.update(numel=1 << 62) if n == first else None, "record says"),
        ("storage_truncated", lambda n, s: s.update(bytes=s["bytes"][:10]) if n == first else None, "record says"),
        ("half_over_float_bytes", lambda n, s: s.update(type="HalfStorage") if n == first else None, "record says"),
        ("long_storage", lambda n, s: s.update(type="LongStorage") if n == first else None, "LongStorage"),
        ("unknown_storage_type", lambda n, s: s.update(type="EvilStorage") if n == first else None, "EvilStorage"),
        ("shape_negative", lambda n, s: s.update(shape=[-4, 3]) if n == first else None, "shape"),
        ("shape_2p31", lambda n, s: s.update(shape=[1 << 31, 3]) if n == first else None, "shape"),
        ("shape_2p40_sq", lambda n, s: s.update(shape=[1 << 40, 1 << 40]) if n == first else None, "shape"),
        ("key_dtype_conflict", lambda n, s: s.update(key="0", type="HalfStorage", bytes=sd[first].numpy().tobytes())
         if n == names[1] else None, "storage '0'"),
        ("storage_missing", lambda n, s: s.update(key="missing", drop=True) if n == first else None, "missing"),
        ("storage_key_traversal", lambda n, s: s.update(key="../../etc/passwd") if n == first else None, "storage key"),
        ("rebuild_os_system", lambda n, s: s.update(fn=os.system) if n == first else None, "state_dict"),
    ]:
        t, s = spec(fn)
        put("pt", f"bad_{name}.pt", zipped(pickle_state(t), s), phrase)
    cmd = f"touch {GADGET}".encode()
    ln = struct.pack("<I", len(cmd))
    crafted = {
        "binunicode_minus1": (b"\x80\x02X\xff\xff\xff\xff", "longer than"),
        "binunicode_2p31m1": (b"\x80\x02X\xff\xff\xff\x7f", "longer than"),
        "binbytes8_2p40": (b"\x80\x02\x8e" + struct.pack("<Q", 1 << 40), "longer than"),
        "binunicode8_2p63m1": (b"\x80\x02\x8d" + struct.pack("<Q", (1 << 63) - 1), "longer than"),
        "binstring_negative": (b"\x80\x02T\xff\xff\xff\xff", "negative"),
        "long4_negative": (b"\x80\x02\x8b\xff\xff\xff\xff", "LONG"),
        "long4_2p31m1": (b"\x80\x02\x8b\xff\xff\xff\x7f", "LONG"),
        "int_malformed": (b"\x80\x02Iabc\n.", "malformed"),
        "long_malformed": (b"\x80\x02Lxyz\n.", "malformed"),
        "long_600_digits": (b"\x80\x02L" + b"9" * 600 + b"L\n.", "malformed"),
        "float_malformed": (b"\x80\x02Fnope\n.", "malformed"),
        "get_missing": (b"\x80\x02g5\n.", "memo"),
        "put_malformed": (b"\x80\x02Np-1x\n.", "memo"),
        "stop_underflow": (b"\x80\x02.", "underflow"),
        "append_non_list": (b"\x80\x02NNa.", "not a list"),
        "setitem_non_dict": (b"\x80\x02NNNs.", "not a dict"),
        "stack_global_ints": (b"\x80\x02K\x01K\x02\x93.", "STACK_GLOBAL"),
        "reduce_non_tuple": (b"\x80\x02cos\nsystem\nK\x01R.", "tuple"),
        "gadget_os_system": (b"\x80\x02cos\nsystem\nX" + ln + cmd + b"\x85R.", "state_dict"),
        "gadget_posix_system": (b"\x80\x02cposix\nsystem\nX" + ln + cmd + b"\x85R.", "state_dict"),
        "gadget_builtins_exec": (b"\x80\x02cbuiltins\nexec\nX" + struct.pack("<I", len(f"open('{GADGET}','w').write('x')")) +
                                 f"open('{GADGET}','w').write('x')".encode() + b"\x85R.", "state_dict"),
        "gadget_subprocess": (b"\x80\x02csubprocess\nPopen\n(X\x05\x00\x00\x00touchX" + struct.pack("<I", len(GADGET)) +
                              GADGET.encode() + b"l\x85R.", "state_dict"),
        "gadget_inst": (b"(X" + ln + cmd + b"ios\nsystem\n.", "opcode"),
        "gadget_obj": (b"(cos\nsystem\nX" + ln + cmd + b"o.", "opcode"),
        "gadget_ext1": (b"\x80\x02\x82\x01.", "opcode"),
        "gadget_newobj_ex": (b"\x80\x04\x8c\x02os\x8c\x06system\x93X" + ln + cmd + b"\x85}\x92.", "state_dict"),
        "unknown_opcode": (b"\x80\x02\xff", "opcode"),
        "empty": (b"", "truncated"),
        "proto_99": (b"\x80\x63N.", "protocol"),
        "frame_2p62": (b"\x80\x04\x95" + struct.pack("<Q", 1 << 62) + b"N.", "state_dict"),
        "deep_marks": (b"\x80\x02" + b"(" * 20000 + b".", "MARK"),
        "deep_lists": (b"\x80\x02" + b"]" * 10000 + b"a" * 9999 + b".", "state_dict"),
        "dict_none_key": (b"\x80\x02}NNs.", "None"),
        "state_dict_int_keys": (b"\x80\x02}K\x01Ns.", "state_dict"),
        "persid_not_tuple": (b"\x80\x02NQ.", "persistent id"),
        "persid_short": (b"\x80\x02X\x07\x00\x00\x00storage\x85Q.", "persistent id"),
        "rebuild_no_args": (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)R.", "storage"),
        "rebuild_none_storage": (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(NK\x00)(tK\x00)\x89tR.", "storage"),
        "rebuild_parameter_no_args": (b"\x80\x02ctorch._utils\n_rebuild_parameter\n)R.", "not a tensor"),
        "setitems_odd": (b"\x80\x02ccollections\nOrderedDict\n)R(X\x01\x00\x00\x00aNX\x01\x00\x00\x00bu.", "odd"),
        "memo_self_reference": (b"\x80\x02]q\x00h\x00a.", "state_dict"),
        "tuple3_underflow": (b"\x80\x02N\x87.", "underflow"),
        "pop_mark_missing": (b"\x80\x021.", "MARK"),
        "invalid_utf8": (b"\x80\x02\x8c\x02\xff\xfe.", "UTF-8"),
        "binfloat_truncated": (b"\x80\x02G\x00\x00", "truncated"),
        "line_without_end": (b"\x80\x02c" + b"a" * 5000, "line"),
    }
    for name, (p, phrase) in crafted.items():
        put("pt", f"bad_pickle_{name}.pt", zipped(p, s0), phrase)

    # data.pkl past the reader's 32 MiB limit, deflated: 40 MiB of '(' in ~40 KB.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        zi = zipfile.ZipInfo("archive/data.pkl")
        zi.compress_type = zipfile.ZIP_DEFLATED
        with z.open(zi, "w") as f:
            f.write(b"\x80\x02")
            for _ in range(40):
                f.write(b"(" * (1 << 20))
        for k, b in s0.items():
            z.writestr("archive/data/" + k, b)
    put("pt", "bad_bomb_40mib_of_marks.pt", buf.getvalue(), "pickle")

    good = zipped(pkl0, s0)
    eocd = good.rfind(b"PK\x05\x06")
    cd = struct.unpack("<I", good[eocd + 16:eocd + 20])[0]
    for name, b in [
        ("cd_offset_beyond", good[:eocd + 16] + struct.pack("<I", len(good) + 100) + good[eocd + 20:]),
        ("cd_offset_zero", good[:eocd + 16] + struct.pack("<I", 0) + good[eocd + 20:]),
        ("entry_count_65535", good[:eocd + 8] + struct.pack("<HH", 65535, 65535) + good[eocd + 12:]),
        ("entry_count_1", good[:eocd + 8] + struct.pack("<HH", 1, 1) + good[eocd + 12:]),
        ("any_cd_size_2p32m1", good[:eocd + 12] + struct.pack("<I", 0xFFFFFFFF) + good[eocd + 16:]),
        ("local_header_destroyed", b"PK\x03\x04" + b"\xff" * 26 + good[30:]),
        ("pkl_compressed_size_2p32m1", good[:cd + 20] + struct.pack("<I", 0xFFFFFFFF) + good[cd + 24:]),
        ("any_pkl_size_2p32m1", good[:cd + 24] + struct.pack("<I", 0xFFFFFFFF) + good[cd + 28:]),
        ("pkl_local_offset_lies", good[:cd + 42] + struct.pack("<I", 12345) + good[cd + 46:]),
        ("pkl_method_99", good[:cd + 10] + struct.pack("<H", 99) + good[cd + 12:]),
        ("empty_zip", b"PK\x05\x06" + b"\x00" * 18),
        ("truncated_200", good[:200]),
        ("truncated_tail", good[:-30]),
    ]:
        put("pt", f"any_zip_{name[4:]}.pt" if name.startswith("any_") else f"bad_zip_{name}.pt", b)
    dup = io.BytesIO()
    import warnings
    with zipfile.ZipFile(dup, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl0)
        for k, b in s0.items():
            z.writestr("archive/data/" + k, b)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            z.writestr("archive/data/0", b"\x00" * 4)
    put("pt", "bad_zip_duplicate_entry.pt", dup.getvalue(), "twice")
    put("pt", "bad_zip_two_data_pkl.pt", zipped(pkl0, s0, extra=[("other/data.pkl", b"\x80\x02}.")]), "data.pkl")
    put("pt", "bad_zip_no_data_pkl.pt", zipped(pkl0, s0).replace(b"data.pkl", b"data.pkX"), "data.pkl")
    put("pt", "bad_legacy.pt", saved(sd, _use_new_zipfile_serialization=False), "legacy")
    put("pt", "bad_not_zip.pt", b"this is not a checkpoint", "not a zip")
    put("pt", "bad_empty.pt", b"", "empty")


def safetensors_corpus():
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.arange(4, dtype="<f4")
    data = a.tobytes() + b.tobytes()
    H = {"__metadata__": {"format": "test", "k": "v"},
         "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
         "b": {"dtype": "F32", "shape": [4], "data_offsets": [24, 40]}}

    def ed(fn):
        h = json.loads(json.dumps(H))
        fn(h)
        return st_bytes(h, data)
    put("safetensors", "ok_basic.safetensors", st_bytes(H, data))
    put("safetensors", "ok_no_metadata.safetensors", ed(lambda h: h.pop("__metadata__")))
    put("safetensors", "ok_empty_tensor.safetensors",
        st_bytes({"e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]}, "b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                 b.tobytes()))
    put("safetensors", "ok_f16_tensor.safetensors", st_bytes({"h": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}, bytes(8)))
    put("safetensors", "ok_reordered.safetensors", st_bytes({"b": H["b"], "a": H["a"]}, data))
    for name, fn, phrase in [
        ("metadata_list", lambda h: h.update(__metadata__=[1, 2]), "__metadata__"),
        ("metadata_string", lambda h: h.update(__metadata__="x"), "__metadata__"),
        ("metadata_null", lambda h: h.update(__metadata__=None), "__metadata__"),
        ("metadata_number_value", lambda h: h["__metadata__"].update(k=3), "not a string"),
        ("metadata_object_value", lambda h: h["__metadata__"].update(k={"x": 1}), "not a string"),
        ("dtype_unknown", lambda h: h["a"].update(dtype="Q7"), "dtype"),
        ("dtype_missing", lambda h: h["a"].pop("dtype"), "lacks"),
        ("dtype_number", lambda h: h["a"].update(dtype=4), "dtype"),
        ("dtype_i64_size_mismatch", lambda h: h["a"].update(dtype="I64"), "does not match"),
        ("shape_negative", lambda h: h["a"].update(shape=[-2, 3]), "shape"),
        ("shape_1e11", lambda h: h["a"].update(shape=[10 ** 11]), "shape"),
        ("shape_2p62_x4", lambda h: h["a"].update(shape=[2 ** 62, 4]), "shape"),
        ("shape_product_overflow", lambda h: h["a"].update(shape=[2 ** 31 - 1] * 4), "does not match"),
        ("shape_float", lambda h: h["a"].update(shape=[1.5]), "shape"),
        ("shape_string", lambda h: h["a"].update(shape="(2,3)"), "shape"),
        ("shape_17_dims", lambda h: h["a"].update(shape=[1] * 17), "shape"),
        ("offsets_reversed", lambda h: h["a"].update(data_offsets=[24, 0]), "end before"),
        ("offsets_negative", lambda h: h["a"].update(data_offsets=[-8, 16]), "data_offsets"),
        ("offsets_beyond", lambda h: h["b"].update(data_offsets=[24, 4000], shape=[994]), "truncated"),
        ("offsets_2p63", lambda h: h["a"].update(data_offsets=[2 ** 63 - 8, 2 ** 63 - 1]), "does not match"),
        ("offsets_three", lambda h: h["a"].update(data_offsets=[0, 12, 24]), "data_offsets"),
        ("offsets_overlap", lambda h: h["b"].update(data_offsets=[8, 24]), "overlaps"),
        ("offsets_gap", lambda h: h["b"].update(data_offsets=[28, 40], shape=[3]), "gap"),
        ("entry_list", lambda h: h.update(a=[1, 2]), "not an object"),
        ("entry_null", lambda h: h.update(a=None), "not an object"),
        ("entry_unexpected_field", lambda h: h["a"].update(extra=1), "unexpected"),
    ]:
        put("safetensors", f"bad_{name}.safetensors", ed(fn), phrase)
    hb = json.dumps(H).encode()
    pad = lambda x: x + b" " * ((8 - len(x) % 8) % 8)
    dupk = pad(hb[:-1] + b', "a": ' + json.dumps(H["a"]).encode() + b"}")
    dupm = pad(hb[:-1] + b', "__metadata__": {}}')
    raw = st_bytes(H, data)
    n = struct.unpack("<Q", raw[:8])[0]
    for name, bts, phrase in [
        ("duplicate_tensor", struct.pack("<Q", len(dupk)) + dupk + data, "twice"),
        ("duplicate_metadata", struct.pack("<Q", len(dupm)) + dupm + data, "twice"),
        ("header_length_0", struct.pack("<Q", 0) + raw[8:], "header length"),
        ("header_length_2p63m1", struct.pack("<Q", (1 << 63) - 1) + raw[8:], "header length"),
        ("header_length_negative", struct.pack("<q", -16) + raw[8:], "header length"),
        ("header_length_past_file", struct.pack("<Q", len(raw)) + raw[8:], "header length"),
        ("header_length_8_short", struct.pack("<Q", n - 8) + raw[8:], None),
        ("header_not_json", struct.pack("<Q", 16) + b"not json at all!" + data, "JSON"),
        ("header_json_array", struct.pack("<Q", 8) + b"[1,2,3] " + data, "not a JSON object"),
        ("header_deep_nesting", struct.pack("<Q", 20000) + b"[" * 10000 + b"]" * 10000 + data, None),
        ("header_invalid_utf8", struct.pack("<Q", 8) + b'{"\xff":1}' + data, None),
        ("header_trailing_text", struct.pack("<Q", n + 8) + raw[8:8 + n] + b"garbage!" + data, "after"),
        ("data_truncated", raw[:-4], "truncated"),
        ("data_trailing", raw + bytes(8), "after its last tensor"),
        ("seven_bytes", raw[:7], None),
        ("empty", b"", "empty"),
    ]:
        put("safetensors", f"bad_{name}.safetensors", bts, phrase)


def image_corpus():
    r = np.random.RandomState(5)
    rgb = (r.rand(8, 8, 3) * 255).astype(np.uint8)
    good = png_rgb(rgb)
    ihdr = lambda w, h, bd=8, ct=2, il=0: struct.pack(">IIBBBBB", w, h, bd, ct, 0, 0, il)
    put("image", "ok_rgb8.png", good)
    put("image", "ok_gray8.png", png_gray(rgb[:, :, 0]))
    put("image", "ok_rgb16.png", png(8, 8, (rgb.astype(">u2") * 257).tobytes(), 2, 16))
    put("image", "ok_rgba8.png", png(8, 8, np.concatenate([rgb, np.full((8, 8, 1), 255, np.uint8)], -1).tobytes(), 6, 8))
    plte = bytes(range(48))
    put("image", "ok_palette.png", png(8, 8, bytes(r.randint(0, 16, 64).astype(np.uint8)), 3, 8,
                                       extra=struct.pack(">I", 48) + b"PLTE" + plte + struct.pack(">I", zlib.crc32(b"PLTE" + plte))))
    put("image", "ok_1x1.png", png_rgb(np.zeros((1, 1, 3), np.uint8)))
    put("image", "ok_gif_1x1.gif", b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
                                   b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")
    for name, b, phrase in [
        ("ihdr_0x0", png(0, 0, ihdr=ihdr(0, 0), idat=zlib.compress(b"")), None),
        ("ihdr_2p32m1_wide", png(1, 1, ihdr=ihdr(0xFFFFFFFF, 1), idat=zlib.compress(b"\x00" * 4)), None),
        ("ihdr_2p31_square", png(1, 1, ihdr=ihdr(1 << 31, 1 << 31), idat=zlib.compress(b"\x00" * 4)), None),
        ("ihdr_65535_square", png(1, 1, ihdr=ihdr(65535, 65535), idat=zlib.compress(b"\x00" * 4)), "pixels"),
        ("valid_9000_square", png(9000, 9000, color_type=0, idat=zeros_z(9001 * 9000)), "pixels"),
        ("ihdr_bit_depth_7", png(8, 8, rgb.tobytes(), ihdr=ihdr(8, 8, bd=7)), None),
        ("ihdr_colour_type_5", png(8, 8, rgb.tobytes(), ihdr=ihdr(8, 8, ct=5)), None),
        ("ihdr_interlace_9", png(8, 8, rgb.tobytes(), ihdr=ihdr(8, 8, il=9)), None),
        ("ihdr_short", png(8, 8, rgb.tobytes(), ihdr=b"\x00\x00\x00\x08"), None),
        ("idat_not_zlib", png(8, 8, idat=b"this is not zlib data at all" * 4), None),
        
        ("idat_truncated_inflate", png(8, 8, rgb.tobytes()[:100]), "truncated"),
        ("idat_bad_filter", png(8, 8, idat=zlib.compress((b"\x09" + bytes(24)) * 8)), None),
        ("truncated_half", good[:len(good) // 2], None),
        ("signature_only", good[:8], None),
        ("empty", b"", None),
        ("text", b"hello, not an image", None),
        ("text_chunk_2p31m1", good[:33] + struct.pack(">I", 0x7FFFFFFF) + b"tEXt" + good[33:], None),
        ("chunk_2p32m1", good[:33] + struct.pack(">I", 0xFFFFFFFF) + b"zzzz" + good[33:], None),
        ("palette_without_plte", png(8, 8, bytes(64), 3, 8), None),
        ("jpeg_truncated", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xdb\x00\x43\x00" + b"\x10" * 20, None),
        ("gif_header_only", b"GIF89a\x20\x00\x20\x00\x00\x00\x00", None),
        ("gif_65535_screen", b"GIF89a\xff\xff\xff\xff\x00\x00\x00,\x00\x00\x00\x00\xff\xff\xff\xff\x00\x02\x02D\x01\x00;", None),
        ("bmp_magic", b"BM" + bytes(60), None),
    ]:
        put("image", f"bad_{name}.png", b, phrase)
    put("image", "any_bad_crc.png", png(8, 8, rgb.tobytes(), crc_ok=False))
    put("image", "any_no_iend.png", good[:-12])
    put("image", "any_idat_inflates_64mib.png", png(8, 8, idat=zeros_z(64 << 20)))
    put("image", "any_idat_zlib_without_checksum.png", png(8, 8, idat=zlib.compress(bytes(200))[:8]))


def mask_corpus():
    m = np.zeros((8, 8), np.int64)
    m[2:6, 2:6] = 3
    m[0, :] = 255
    put("mask", "ok_gray8.png", png_gray(m.astype(np.uint8)))
    put("mask", "ok_gray16_small.png", png_gray(m, 16))
    put("mask", "ok_i8.npy", npy(descr="<i8", shape=m.shape, data=m.astype("<i8").tobytes()))
    put("mask", "ok_u1.npy", npy(descr="|u1", shape=m.shape, data=m.astype(np.uint8).tobytes()))
    put("mask", "ok_f4_whole.npy", npy(descr="<f4", shape=m.shape, data=m.astype("<f4").tobytes()))
    at = lambda v, dt="<i8": np.where(np.arange(64).reshape(8, 8) == 10, v, m).astype(dt)
    for name, b, phrase in [
        ("gray16_258.png", png_gray(at(258), 16), "mask value 258"),
        ("gray8_class_9.png", png_gray(at(9).astype(np.uint8)), "mask value 9"),
        ("rgb_colour.png", png_rgb(np.stack([m * 40 % 256, m % 256, m % 256], -1).astype(np.uint8)), "colour"),
        ("rgb16_colour.png", png(8, 8, (np.stack([m] * 3, -1).astype(">u2")).tobytes(), 2, 16), "16-bit colour"),
        ("palette.png", png(8, 8, bytes(64), 3, 8, extra=struct.pack(">I", 48) + b"PLTE" + bytes(48) +
                            struct.pack(">I", zlib.crc32(b"PLTE" + bytes(48)))), "palette"),
        ("size_16.png", png_gray(np.zeros((16, 16), np.uint8)), "16×16"),
        ("idat_not_zlib.png", png(8, 8, color_type=0, idat=b"garbage" * 9), None),
        ("i8_value_7.npy", npy(descr="<i8", shape=(8, 8), data=at(7).tobytes()), "mask value 7"),
        ("i8_negative.npy", npy(descr="<i8", shape=(8, 8), data=at(-1).tobytes()), "mask value -1"),
        ("i8_2p40.npy", npy(descr="<i8", shape=(8, 8), data=at(1 << 40).tobytes()), "mask value 1099511627776"),
        ("f8_1p5.npy", npy(descr="<f8", shape=(8, 8), data=at(1.5, "<f8").tobytes()), "non-integer"),
        ("f8_nan.npy", npy(descr="<f8", shape=(8, 8), data=at(np.nan, "<f8").tobytes()), "non-integer"),
        ("bool.npy", npy(descr="|b1", shape=(8, 8), data=(m > 0).astype(np.uint8).tobytes()), "bool"),
        ("3d.npy", npy(descr="<i8", shape=(1, 8, 8), data=m.astype("<i8").tobytes()), "(H, W)"),
        ("shape_2p31_sq.npy", npy(descr="<i8", shape=(1 << 31, 1 << 31)), None),
    ]:
        put("mask", f"bad_{name}", b, phrase)


def flags_corpus():
    base = json.load(open(os.path.join(os.path.dirname(__file__), "..", "fixtures", "adm-tiny", "flags.json")))
    put("flags", "ok_adm_tiny.json", json.dumps(base).encode())
    put("flags", "ok_shell_style.json", b'{"image_size": "256", "learn_sigma": "True", "attention_resolutions": [32, 16, 8], "dropout": 0}')
    put("flags", "ok_bom.json", "\ufeff".encode() + json.dumps(base).encode())
    for key, v, phrase in [
        ("num_res_blocks", 100000, "num_res_blocks"), ("num_res_blocks", -1, "num_res_blocks"), ("num_res_blocks", 2 ** 31, "integer"),
        ("diffusion_steps", 0, "diffusion_steps"), ("noise_schedule", "cubic", "noise_schedule"), ("image_size", 0, "image_size"),
        ("image_size", 2 ** 30, "image_size"), ("num_channels", 2 ** 20, "num_channels"), ("channel_mult", "0,1", "channel_mult"),
        ("channel_mult", "1,2,x", "channel_mult"), ("channel_mult", ",".join(["1"] * 50), "channel_mult"),
        ("attention_resolutions", "0", "attention_resolutions"), ("attention_resolutions", "99999999999", "attention_resolutions"),
        ("num_heads", 0, "num_heads"), ("num_head_channels", 0, "num_head_channels"), ("dropout", 2, "dropout"),
        ("dropout", "NaN", "dropout"), ("learn_sigma", "maybe", "learn_sigma"), ("class_cond", None, "class_cond"),
    ]:
        f = dict(base)
        f[key] = v
        put("flags", f"bad_{key}_{str(v)[:12].replace(',', '_')}.json", json.dumps(f).encode(), phrase)
    for name, text in [("top_level_list", b"[1, 2]"), ("duplicate_key", json.dumps(base)[:-1].encode() + b', "image_size": 64}'),
                       ("empty", b""), ("deep_nesting", b"[" * 100000 + b"]" * 100000), ("invalid_utf8", b'{"image_size": "\xff\xfe"}'),
                       ("nan_literal", b'{"dropout": NaN}'), ("unknown_flag", b'{"num_channel": 32}')]:
        put("flags", f"bad_{name}.json", text)


def config_corpus():
    base = {"exp_dir": "exp", "model_type": "ddpm", "category": "bedroom", "number_class": 29, "ignore_label": 0,
            "training_path": "train", "testing_path": "test", "model_path": "m.safetensors", "dim": [256, 256, 8448],
            "steps": [50, 150, 250], "blocks": [5, 6, 7, 8, 12], "model_num": 10, "batch_size": 64, "training_number": 40,
            "testing_number": 20, "share_noise": True, "upsample_mode": "bilinear"}
    put("config", "ok_bedroom.json", json.dumps(base).encode())
    for key, v in [("dim", [0, 0, 8448]), ("dim", [2 ** 31, 2 ** 31, 8448]), ("dim", [100000, 100000, 8448]), ("dim", [256, 256, -1]),
                   ("dim", [256, 256]), ("dim", [256, 128, 8448]), ("steps", []), ("steps", [-1]), ("steps", [2 ** 40]),
                   ("steps", [1] * 100), ("blocks", []), ("blocks", [-1]), ("model_num", 0), ("model_num", 100000),
                   ("model_num", 2 ** 31), ("model_num", 1.5), ("batch_size", 1), ("batch_size", 2 ** 31), ("max_epochs", 0),
                   ("number_class", 1), ("number_class", 256), ("ignore_label", -1), ("ignore_label", 300),
                   ("training_number", -1), ("exp_dir", ""), ("exp_dir", "a\u0000b"), ("model_path", 3), ("share_noise", "yes"),
                   ("feature_path", "x"), ("upsample_mode", "nearest"), ("input_activations", True)]:
        c = dict(base)
        c[key] = v
        put("config", f"bad_{key}_{json.dumps(v)[:16].replace('/', '_').replace(',', '_').replace(' ', '')}.json", json.dumps(c).encode(), key)
    for key in ("exp_dir", "dim", "steps", "number_class"):
        c = dict(base)
        c.pop(key)
        put("config", f"bad_missing_{key}.json", json.dumps(c).encode(), key)
    for name, text in [("top_level_list", b"[1]"), ("empty", b""), ("not_json", b"{nope"), ("nan_literal", b'{"seed": NaN}'),
                       ("duplicate_key", json.dumps(base)[:-1].encode() + b', "category": "cat"}'), ("deep_nesting", b"[" * 100000 + b"]" * 100000),
                       ("invalid_utf8", b'{"exp_dir": "\xff"}')]:
        put("config", f"bad_{name}.json", text)


if __name__ == "__main__":
    import shutil
    keep = {}
    if os.path.isdir(ROOT):  # crash_* files found by fuzzing are kept across regenerations
        for d, _, files in os.walk(ROOT):
            for f in files:
                if f.startswith("crash_"):
                    keep[os.path.join(d, f)] = open(os.path.join(d, f), "rb").read()
        shutil.rmtree(ROOT)
    for f in (npy_corpus, pt_corpus, safetensors_corpus, image_corpus, mask_corpus, flags_corpus, config_corpus):
        f()
    for p, b in keep.items():
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "wb").write(b)
    with open(os.path.join(ROOT, "expect.tsv"), "w") as f:
        f.write("# file\tphrase the refusal must contain (written by tests/hostile/make_corpus.py)\n")
        f.write("\n".join(sorted(expect)) + "\n")
    total = sum(len(fs) for _, _, fs in os.walk(ROOT))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ROOT) for f in fs)
    print(f"{total} files, {size / 1024:.0f} KiB in {ROOT}")
