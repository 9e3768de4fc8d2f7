"""The PyTorch peer for IlgpuDiffSeg's GPU benchmark (issue 5), run in the same session on the same device.

It builds the same ADM configuration from torch.nn layers (tests/generators/adm_reference.py — the PyTorch model that
reproduces the official adm-tiny fixture bit for bit) with random weights, and times with CUDA events, warm-up excluded:
  - the UNet forward at batch 1 and 8 in fp32 with TF32 off, in TF32, and in fp16 (autocast: convolutions and linears
    in fp16, GroupNorm and softmax in fp32 — close to the original's convert_to_fp16);
  - the original pipeline's features of one image: three separate forwards with forward hooks on the output blocks,
    F.interpolate(bilinear) to 256² and torch.cat, then the .cpu() copy that prepare_data makes;
  - the original MLP training loop: features in host memory, DataLoader(batch 64, shuffle) moving each batch to the GPU,
    one member (the original trains its 10 members one after another);
  - the original prediction of one image: 10 members on 65,536 pixels, mode vote.

    python3 benchmarks/torch_peer.py [--small] [--out FILE.json]       (--small: demo shapes, runs on a CPU too)
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "generators"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from adm_reference import UNet, randomize  # noqa: E402
from original_mlp import PixelClassifier  # noqa: E402

DEFAULTS = dict(image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1, num_head_channels=-1,
                attention_resolutions="16,8", channel_mult="", dropout=0.0, class_cond=False, use_scale_shift_norm=True,
                resblock_updown=False, use_new_attention_order=False, learn_sigma=False)
LSUN = dict(DEFAULTS, image_size=256, num_channels=256, num_head_channels=64, attention_resolutions="32,16,8",
            resblock_updown=True, learn_sigma=True, dropout=0.1)
DEMO = dict(DEFAULTS, image_size=64, num_channels=32, channel_mult="1,2,2,2", num_res_blocks=1, attention_resolutions="8",
            num_head_channels=32, resblock_updown=True, learn_sigma=True)


def timed(fn, device, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) * 1000 / reps


def set_precision(mode):
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"


def autocast(mode, device):
    if mode == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--small", action="store_true")
    p.add_argument("--out")
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    flags = DEMO if a.small else LSUN
    size = flags["image_size"]
    blocks = [2, 3, 4, 5, 7] if a.small else [5, 6, 7, 8, 12]
    classes = 5 if a.small else 29
    model = UNet(flags).eval().to(device)
    randomize(model, torch.Generator().manual_seed(1)) if device.type == "cpu" else randomize_on(model, device)
    rows = []

    def add(name, ms):
        rows.append({"name": name, "ms": ms})
        print(f"{name:70s} {ms:10.3f} ms", file=sys.stderr)

    with torch.no_grad():
        modes = ["fp32", "tf32", "fp16"] if device.type == "cuda" else ["fp32"]
        for mode in modes:
            set_precision(mode)
            for batch in (1, 8):
                x = torch.randn(batch, 3, size, size, device=device)
                t = torch.full((batch,), 250, device=device)
                with autocast(mode, device):
                    add(f"torch UNet forward, batch {batch}, {mode}", timed(lambda: model(x, t), device, reps=5 if a.small else 10))

        # The original pipeline's features of one image (docs/method.md): three forwards, hooks, upsample, concat, copy out.
        captured = {}
        hooks = [model.output_blocks[b].register_forward_hook(lambda m, i, o, b=b: captured.__setitem__(b, o)) for b in blocks]
        x0 = torch.rand(1, 3, size, size, device=device) * 2 - 1
        eps = torch.randn(1, 3, size, size, device=device)
        abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)

        def features(mode, to_host):
            acts = []
            for step in (50, 150, 250):
                xt = (abar[step].sqrt().float() * x0 + (1 - abar[step]).sqrt().float() * eps)
                with autocast(mode, device):
                    model(xt, torch.tensor([step], device=device))
                acts += [captured[b].float() for b in blocks]
            f = torch.cat([F.interpolate(act, size=(size, size), mode="bilinear")[0] for act in acts], dim=0)
            return f.cpu() if to_host else f

        for mode in modes:
            set_precision(mode)
            add(f"torch original features of one image, {mode} (on device)", timed(lambda: features(mode, False), device, reps=3))
            add(f"torch original features of one image, {mode} (+ .cpu() as prepare_data)", timed(lambda: features(mode, True), device, reps=3))
        for h in hooks:
            h.remove()
        set_precision("fp32")
        feats = features("fp32", False)
        dim = feats.shape[0]

    # The original MLP loop: X in host memory, DataLoader batches of 64 moved to the device, one member.
    pixels = 20000 if a.small else 100000
    x_host = torch.randn(pixels, dim)
    y_host = torch.randint(0, classes, (pixels,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_host, y_host), batch_size=64, shuffle=True, drop_last=True)
    mlp = PixelClassifier(classes, dim).to(device).train()
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    iterations = 300 if a.small else 2000
    it = iter(loader)

    def step():
        nonlocal it
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(loader)
            xb, yb = next(it)
        xb, yb = xb.to(device), yb.to(device)
        opt.zero_grad()
        loss = loss_fn(mlp(xb), yb)
        loss.backward()
        opt.step()
        return loss.item()

    ms = timed(step, device, warmup=20, reps=iterations)
    add(f"torch original MLP step, one member (D={dim}) = {1000 / ms:.0f} it/s; ×10 members sequential", ms)

    # The original prediction of one image: 10 members on every pixel, mode vote.
    members = [PixelClassifier(classes, dim).to(device).eval() for _ in range(10)]
    with torch.no_grad():
        flat = feats.reshape(dim, -1).T.contiguous()

        def predict():
            votes = torch.stack([m(flat).argmax(1) for m in members], 1)
            return torch.mode(votes.cpu(), 1).values

        add(f"torch original prediction of one {size}² image (10 members, features given)", timed(predict, device, reps=3))

    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__, "rows": rows}
    print(json.dumps(result))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


def randomize_on(model, device):
    """The fixture's random recipe, drawn on the device (the 552.8M-parameter model would take long on the host)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, device=device) / (p[0].numel() ** 0.5))
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, device=device))
            else:
                p.copy_(0.1 * torch.randn(p.shape, device=device))


if __name__ == "__main__":
    main()
