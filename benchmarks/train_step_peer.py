"""The peer of `$B train-step`: one training step of the demo ADM (64², 1.9M parameters) in the official
guided-diffusion code on PyTorch — create_model_and_diffusion, training_losses with the uniform sampler, backward,
AdamW, an EMA update — timed after a warm-up step on the same CPU threads. With --forward, the peer of `$B forward`:
one UNet forward pass (eval mode, no grad) of the chosen configuration at the batch size.

    git clone https://github.com/openai/guided-diffusion /tmp/guided-diffusion        (not part of this repository)
    /usr/bin/python3 benchmarks/train_step_peer.py --guided-diffusion /tmp/guided-diffusion [--batch 16] [--reps 3] [--threads 2]

Without --guided-diffusion it runs tests/generators/{adm_reference,diffusion_reference}.py, the repository's models of
the same code (bit-identical on the official fixtures), and says so.
"""
import argparse
import contextlib
import os
import sys
import time

import torch

CONFIGS = {
    "demo": dict(image_size=64, num_channels=32, channel_mult="1,2,2,2", num_res_blocks=1, attention_resolutions="8",
                 num_head_channels=32, resblock_updown=True, use_scale_shift_norm=True, learn_sigma=True, dropout=0.0,
                 noise_schedule="linear", diffusion_steps=1000),
    "lsun256": dict(image_size=256, num_channels=256, channel_mult="", num_res_blocks=2, attention_resolutions="32,16,8",
                    num_head_channels=64, resblock_updown=True, use_scale_shift_norm=True, learn_sigma=True, dropout=0.1,
                    noise_schedule="linear", diffusion_steps=1000),
}
FLAGS = dict(CONFIGS["demo"])


def official(path):
    sys.path.insert(0, path)
    from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
    args = model_and_diffusion_defaults()
    args.update(FLAGS)
    model, diffusion = create_model_and_diffusion(**args)

    def loss(x, t, noise):
        return diffusion.training_losses(model, x, t, noise=noise)["loss"].mean()
    return model, diffusion.num_timesteps, loss, "guided-diffusion " + path


def reference():
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "generators")
    sys.path.insert(0, here)
    from adm_reference import UNet
    from diffusion_reference import Diffusion
    model = UNet(**{k: v for k, v in FLAGS.items() if k not in ("noise_schedule", "diffusion_steps")})
    diffusion = Diffusion.from_flags(FLAGS)

    def loss(x, t, noise):
        return diffusion.training_losses(model, x, t, noise)["loss"].mean()
    return model, diffusion.num_timesteps, loss, "the repository's reference models (tests/generators)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--guided-diffusion")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--config", choices=sorted(CONFIGS), default="demo")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fp16", action="store_true", help="autocast the model to fp16 (CUDA)")
    ap.add_argument("--forward", action="store_true", help="time the UNet forward pass instead of a training step")
    a = ap.parse_args()
    FLAGS.clear()
    FLAGS.update(CONFIGS[a.config])
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, steps, loss_of, what = official(a.guided_diffusion) if a.guided_diffusion else reference()
    dev = torch.device(a.device)
    if a.forward:
        return forward(a, model.to(dev).eval(), dev, what)
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    ema = [p.detach().clone() for p in model.parameters()]
    size = FLAGS["image_size"]
    x = torch.rand(a.batch, 3, size, size, device=dev) * 2 - 1
    scaler = torch.cuda.amp.GradScaler(enabled=a.fp16)

    def step():
        opt.zero_grad()
        t = torch.randint(0, steps, (a.batch,), device=dev)
        # torch 1.13 refuses fp16 autocast on the CPU even when disabled: enter it only when asked.
        with torch.autocast(a.device, dtype=torch.float16) if a.fp16 else contextlib.nullcontext():
            loss = loss_of(x, t, torch.randn_like(x))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        with torch.no_grad():
            for e, p in zip(ema, model.parameters()):
                e.mul_(0.9999).add_(p, alpha=1 - 0.9999)

    step()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(a.reps):
        step()
    sync()
    each = (time.perf_counter() - start) / a.reps
    peak = f", peak {torch.cuda.max_memory_allocated() / 1e9:.2f} GB" if dev.type == "cuda" else ""
    print(f"peer train step batch {a.batch}: {each:.3f} s per step (PyTorch {torch.__version__}, {a.config}, "
          f"{'fp16 autocast' if a.fp16 else 'fp32'}, {a.device}, {a.threads} threads{peak}, {what})")


def forward(a, model, dev, what):
    size = FLAGS["image_size"]
    x = torch.randn(a.batch, 3, size, size, device=dev)
    t = torch.full((a.batch,), 250, dtype=torch.long, device=dev)
    with torch.no_grad():
        model(x, t)
        start = time.perf_counter()
        for _ in range(a.reps):
            model(x, t)
    each = (time.perf_counter() - start) / a.reps
    print(f"peer forward batch {a.batch}: {each:.3f} s per pass (PyTorch {torch.__version__}, {a.config}, fp32, {a.device}, "
          f"{a.threads} threads, {what})")


if __name__ == "__main__":
    main()
