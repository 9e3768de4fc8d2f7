"""Writers for the formats diffseg reads, able to write them wrong: .npy, safetensors, PNG and torch zip checkpoints
with pickles built by hand (shapes, strides, offsets, storage records all free). Shared by make_hostile.py (the
command-line campaign) and make_corpus.py (the small regression and fuzzing corpus in tests/fixtures/hostile)."""
import collections
import io
import json
import pickle
import random
import struct
import zipfile
import zlib

import numpy as np
import torch

INTERESTING32 = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE]
INTERESTING64 = INTERESTING32 + [1 << 40, (1 << 62), (1 << 63) - 1, (1 << 64) - 1]



_zeros = {}


def zeros_z(n):
    """zlib stream of n zero bytes, compressed once and cached."""
    if n not in _zeros:
        c = zlib.compressobj(9)
        block, parts, left = bytes(1 << 24), [], n
        while left:
            parts.append(c.compress(block[:min(left, len(block))]))
            left -= min(left, len(block))
        _zeros[n] = b"".join(parts) + c.flush()
    return _zeros[n]


def png(w, h, pixels=None, color_type=2, bit_depth=8, idat=None, ihdr=None, crc_ok=True, extra=b""):
    def chunk(tag, body):
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc if crc_ok else crc ^ 1)
    if ihdr is None:
        ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    if idat is None:
        channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
        row_bytes = (w * channels * bit_depth + 7) // 8
        raw = bytearray()
        for y in range(h):
            raw.append(0)
            raw += pixels[y * row_bytes:(y + 1) * row_bytes] if pixels is not None else bytes(row_bytes)
        idat = zlib.compress(bytes(raw), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_rgb(arr):  # arr (H, W, 3) uint8
    h, w, _ = arr.shape
    return png(w, h, arr.astype(np.uint8).tobytes(), 2, 8)


def png_gray(arr, bit_depth=8):
    h, w = arr.shape
    data = arr.astype(">u2").tobytes() if bit_depth == 16 else arr.astype(np.uint8).tobytes()
    return png(w, h, data, 0, bit_depth)


def npy(descr="<f4", shape=(2, 3), data=None, fortran="False", version=1, header_delta=0, raw_dict=None, pad_newline=True):
    shape_s = "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
    d = raw_dict if raw_dict is not None else f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape_s}, }}"
    pre = 10 if version == 1 else 12
    total = pre + len(d) + 1
    header = d + " " * ((64 - total % 64) % 64) + ("\n" if pad_newline else " ")
    hl = len(header) + header_delta
    if version == 1:
        out = b"\x93NUMPY\x01\x00" + struct.pack("<H", hl & 0xFFFF)
    else:
        out = b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", hl & 0xFFFFFFFF)
    if data is None:
        data = b""
    return out + header.encode("latin1") + data


def st_read(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]


def st_bytes(header, data, hl_override=None):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    n = len(h) if hl_override is None else hl_override
    return struct.pack("<Q", n & 0xFFFFFFFFFFFFFFFF) + h + data


class FakeStorage:
    def __init__(self, typename, key, numel):
        self.typename, self.key, self.numel = typename, key, numel


class FakeTensor:
    def __init__(self, storage, offset, shape, stride, fn=None):
        self.storage, self.offset, self.shape, self.stride, self.fn = storage, offset, shape, stride, fn

    def __reduce__(self):
        return (self.fn or torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, tuple(self.shape), tuple(self.stride), False, collections.OrderedDict()))


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            if not hasattr(torch, obj.typename):
                cls = type(obj.typename, (), {})
                cls.__module__ = "torch"
                setattr(torch, obj.typename, cls)
            return ("storage", getattr(torch, obj.typename), obj.key, "cpu", obj.numel)
        return None


def pickle_state(tensors):
    buf = io.BytesIO()
    TorchPickler(buf, protocol=2).dump(tensors)
    return buf.getvalue()


def pt_zip(path, pkl, storages, prefix="archive/", extra=None, compress_pkl=False):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(prefix + "data.pkl", pkl, zipfile.ZIP_DEFLATED if compress_pkl else zipfile.ZIP_STORED)
        for k, b in storages.items():
            z.writestr(prefix + "data/" + k, b)
        z.writestr(prefix + "version", b"3\n")
        for name, b in (extra or []):
            z.writestr(name, b)


def mutate_bytes(b, n=None, lo=0, rng=random.Random(13)):
    b = bytearray(b)
    for _ in range(n or rng.randint(1, 4)):
        op = rng.randrange(6)
        i = rng.randrange(lo, len(b)) if len(b) > lo else lo
        if op == 0 and b:
            b[i % len(b)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[i % len(b)] = rng.choice([0, 0xFF, 0x7F, 0x80, ord("("), ord("]")])
        elif op == 2 and len(b) >= i + 4:
            b[i:i + 4] = struct.pack("<I", rng.choice(INTERESTING32))
        elif op == 3 and len(b) >= i + 8:
            b[i:i + 8] = struct.pack("<Q", rng.choice(INTERESTING64))
        elif op == 4:
            j = min(len(b), i + rng.randint(1, 64))
            del b[i:j]
        else:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(b)
