"""Generates tests/fixtures/images/: small images and what guided-diffusion's image_datasets.py makes of them with PIL,
the oracle for src/IlgpuDiffSeg/Data/ImageDataset.cs and PilResample.cs.

    /usr/bin/python3 tests/generators/make_image_fixtures.py        (Debian python3-pil 9.4, numpy 1.24)

Writes
  inputs/*            PNGs of every PIL mode a training folder may hold (RGB, RGBA, LA, L, 1, P with tRNS, 16-bit,
                      interlaced), GIFs, JPEGs;
  crop/*.npy          center_crop_arr(Image.open(f).convert("RGB"), size) as image_datasets.py returns it:
                      float32 (3, size, size), x / 127.5 - 1;
  decoded/*.npy       the full decoded RGB pixels (H, W, 3) uint8 of each input (PIL's decoder is the reference);
  resize/*.npy        Image.resize of a synthetic RGB pattern (the pattern below, rebuilt by the C# test, so no source
                      is stored) to the listed size with BOX or BICUBIC: uint8 (H, W, 3);
  manifest.json       the cases.
"""
import io
import json
import os

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "images")


def pattern(w, h, salt):
    """High-frequency RGB noise covering 0..255 (stresses the bicubic lobes' clipping); ImageFixtureTests.Pattern."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    out = np.empty((h, w, 3), np.uint8)
    for c in range(3):
        out[..., c] = ((x * 73 + y * 151 + c * 37 + salt * 11) ^ (x * y * 11)) & 255
    return out


def smooth(w, h, salt):
    """A photo-like picture: gradients, a disc and mild noise (for the lossy JPEG)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(salt)
    r = 40 + 170 * x / max(w - 1, 1)
    g = 60 + 150 * y / max(h - 1, 1)
    b = 128 + 100 * np.sin(x * 0.3) * np.cos(y * 0.2)
    disc = (x - w * 0.6) ** 2 + (y - h * 0.4) ** 2 < (min(w, h) * 0.25) ** 2
    r[disc], g[disc], b[disc] = 230, 40, 50
    img = np.stack([r, g, b], -1) + rng.normal(0, 6, (h, w, 3))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def png16_rgb(w, h, salt):
    """A 16-bit RGB PNG (PIL cannot write one): samples hi·256 + lo from two patterns."""
    import struct
    import zlib
    hi, lo = pattern(w, h, salt).astype(np.uint16), pattern(w, h, salt + 1).astype(np.uint16)
    raw = b"".join(b"\0" + (hi[y] * 256 + lo[y]).astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def offset_frame_gif(gif, screen_w, screen_h, left, top):
    """The GIF with a larger logical screen and its frame moved to (left, top): pixels outside the frame."""
    import struct
    b = bytearray(gif)
    b[6:10] = struct.pack("<HH", screen_w, screen_h)
    i = 13 + ((3 << ((b[10] & 7) + 1)) if b[10] & 0x80 else 0)
    while b[i] == 0x21:                      # extensions: label, then sub-blocks up to a 0 length
        i += 2
        while b[i]:
            i += b[i] + 1
        i += 1
    assert b[i] == 0x2C
    b[i + 1:i + 5] = struct.pack("<HH", left, top)
    return bytes(b)


def center_crop_arr(pil_image, image_size):
    # guided_diffusion/image_datasets.py, center_crop_arr, unchanged.
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y: crop_y + image_size, crop_x: crop_x + image_size]


def inputs():
    """name -> (bytes of the file, image size for center_crop_arr)."""
    files = {}

    def save(name, img, size, **kw):
        buf = io.BytesIO()
        img.save(buf, format=name.rsplit(".", 1)[1].replace("jpg", "jpeg").upper(), **kw)
        files[name] = (buf.getvalue(), size)

    save("rgb_37x23.png", Image.fromarray(pattern(37, 23, 1)), 16)            # bicubic down, non-square, odd
    save("rgb_11x9.png", Image.fromarray(pattern(11, 9, 2)), 16)              # bicubic up
    save("rgb_67x35.png", Image.fromarray(pattern(67, 35, 3)), 16)            # BOX 67x35 -> 33x17, then bicubic
    save("rgb_16x16.png", Image.fromarray(pattern(16, 16, 4)), 16)            # no resize at all
    save("rgb_24x40_interlaced.png", Image.fromarray(pattern(24, 40, 5)), 20, optimize=False)
    rgba = np.dstack([pattern(40, 30, 6), pattern(40, 30, 7)[..., 0]])
    save("rgba_40x30.png", Image.fromarray(rgba, "RGBA"), 24)                 # alpha dropped, not composited
    la = np.dstack([pattern(30, 21, 8)[..., 0], pattern(30, 21, 9)[..., 1]])
    save("la_30x21.png", Image.fromarray(la, "LA"), 12)
    save("gray_50x33.png", Image.fromarray(pattern(50, 33, 10)[..., 1], "L"), 20)
    save("bilevel_27x19.png", Image.fromarray(pattern(27, 19, 11)[..., 2] > 127), 12)
    pal = Image.fromarray(pattern(29, 31, 12)).quantize(colors=37, method=Image.Quantize.MEDIANCUT)
    save("palette_trns_29x31.png", pal, 16, transparency=5)
    g16 = (pattern(26, 18, 13)[..., 0].astype(np.int32) * 257 + pattern(26, 18, 14)[..., 1]).astype(np.uint16)
    save("gray16_26x18.png", Image.fromarray(g16.astype(np.int32), "I").convert("I;16"), 12)   # PIL: mode I, clipped
    files["rgb16_21x17.png"] = (png16_rgb(21, 17, 36), 12)                   # PIL: the high byte of each sample
    pal = Image.fromarray(pattern(30, 26, 15)).quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    save("palette_30x26.gif", pal, 12)
    pal = Image.fromarray(pattern(22, 25, 16)).quantize(colors=20, method=Image.Quantize.MEDIANCUT)
    save("transparent_22x25.gif", pal, 12, transparency=3)
    # Frames smaller than the screen: PIL fills the rest with the transparent index, else index 0.
    files["offset_transparent_30x28.gif"] = (offset_frame_gif(files["transparent_22x25.gif"][0], 30, 28, 5, 2), 12)
    files["offset_opaque_33x29.gif"] = (offset_frame_gif(files["palette_30x26.gif"][0], 33, 29, 1, 3), 12)
    save("photo_64x48.jpg", Image.fromarray(smooth(64, 48, 17)), 32, quality=90)          # 4:2:0 (PIL's default)
    save("photo_45x61_444.jpg", Image.fromarray(smooth(45, 61, 18)), 20, quality=95, subsampling=0)
    save("gray_40x40.jpg", Image.fromarray(smooth(40, 40, 19)[..., 1], "L"), 16, quality=90)
    return files


RESIZES = [  # (w, h, out_w, out_h, filter, salt)
    (131, 70, 65, 35, "box", 21), (65, 35, 32, 17, "box", 22), (64, 64, 32, 32, "box", 23), (200, 150, 15, 11, "box", 24),
    (37, 23, 26, 16, "bicubic", 25), (100, 61, 64, 39, "bicubic", 26), (11, 9, 20, 16, "bicubic", 27),
    (5, 7, 16, 22, "bicubic", 28), (37, 23, 37, 16, "bicubic", 29), (23, 37, 16, 37, "bicubic", 30),
    (40, 10, 20, 30, "bicubic", 31), (200, 150, 15, 11, "bicubic", 32), (1, 1, 3, 2, "bicubic", 33),
    (3, 300, 2, 7, "bicubic", 34), (96, 64, 144, 96, "bicubic", 35),
]


def main():
    for sub in ("inputs", "crop", "decoded", "resize"):
        os.makedirs(os.path.join(OUT, sub), exist_ok=True)
    manifest = {"crop": [], "resize": []}
    for name, (data, size) in inputs().items():
        with open(os.path.join(OUT, "inputs", name), "wb") as f:
            f.write(data)
        with open(os.path.join(OUT, "inputs", name), "rb") as f:   # as ImageDataset.__getitem__ opens it
            pil_image = Image.open(f)
            pil_image.load()
        mode = pil_image.mode
        pil_image = pil_image.convert("RGB")
        stem = name.rsplit(".", 1)[0]
        np.save(os.path.join(OUT, "decoded", stem + ".npy"), np.array(pil_image))
        arr = center_crop_arr(pil_image, size).astype(np.float32) / 127.5 - 1
        np.save(os.path.join(OUT, "crop", stem + ".npy"), np.ascontiguousarray(np.transpose(arr, [2, 0, 1])))
        manifest["crop"].append({"file": name, "mode": mode, "size": size})
    for w, h, ow, oh, flt, salt in RESIZES:
        img = Image.fromarray(pattern(w, h, salt))
        out = np.array(img.resize((ow, oh), resample=Image.BOX if flt == "box" else Image.BICUBIC))
        name = f"{w}x{h}_to_{ow}x{oh}_{flt}.npy"
        np.save(os.path.join(OUT, "resize", name), out)
        manifest["resize"].append({"w": w, "h": h, "out_w": ow, "out_h": oh, "filter": flt, "salt": salt, "file": name})
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
