"""Sampling speed of `diffseg sample` against guided-diffusion's p_sample_loop on PyTorch, in the same run on the same
machine: the same model (a converted .safetensors, exported to .pt with `diffseg export`), the same respacing, batch and
sampler; steps per second of the whole loop: for diffseg as the command reports it, with and without its first step
(which compiles the kernels); for PyTorch after one warm-up forward, with 1 thread and with one per core (the faster is
the reference: on a loaded machine OpenMP's spinning threads can be the slower).

    python3 benchmarks/sample_peer.py --model weights/demo-adm.safetensors [--steps 20] [--batch 4] [--ddim]
        [--official DIR]   (DIR holds guided-diffusion's guided_diffusion package; default: tests/generators' reference)
        [--device cpu|cuda] [--out FILE.md]

The PyTorch side runs guided-diffusion's own UNetModel and SpacedDiffusion when --official is given, else the
repository's reference model (tests/generators/adm_reference.py, bit-identical to it on the official fixture).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, os.path.join(ROOT, "tests", "generators"))


def diffseg(*args):
    dll = os.path.join(ROOT, "src", "IlgpuDiffSeg.Cli", "bin", "Release", "net10.0", "diffseg.dll")
    cmd = ["dotnet", dll] if os.path.exists(dll) else ["dotnet", "run", "--project", os.path.join(ROOT, "src", "IlgpuDiffSeg.Cli"),
                                                       "-c", "Release", "--"]
    r = subprocess.run(cmd + list(args), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"diffseg {' '.join(args)} failed:\n{r.stderr}")
    return r.stdout + r.stderr


def torch_model_and_diffusion(flags, state, steps, official):
    if official:
        sys.path.insert(0, official)
        import guided_diffusion.script_util as su
        known = su.model_and_diffusion_defaults()
        model, diffusion = su.create_model_and_diffusion(**{k: flags[k] for k in known if k in flags and k != "timestep_respacing"},
                                                         timestep_respacing=str(steps))
        model.load_state_dict(state, strict=True)
        return model.eval(), lambda m, shape, ddim: (diffusion.ddim_sample_loop if ddim else diffusion.p_sample_loop)(
            m, shape, clip_denoised=True, device="cpu" if not torch.cuda.is_available() else None)
    from adm_reference import UNet
    from diffusion_reference import Diffusion
    model = UNet(flags).eval()
    model.load_state_dict(state, strict=True)
    d = Diffusion.from_flags(flags, str(steps))

    def loop(m, shape, ddim):
        stack = torch.randn((d.num_timesteps + 1, *shape), device=next(m.parameters()).device)
        return d.ddim_sample_loop(m, stack) if ddim else d.p_sample_loop(m, stack)
    return model, loop


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "weights", "demo-adm.safetensors"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--ddim", action="store_true")
    ap.add_argument("--official")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pt, flags_path = os.path.join(tmp, "m.pt"), os.path.join(tmp, "flags.json")
        diffseg("export", a.model, "-o", pt, "--flags-out", flags_path)
        flags = json.load(open(flags_path))
        state = torch.load(pt, map_location="cpu")

        model, loop = torch_model_and_diffusion(flags, state, a.steps, a.official)
        dev = torch.device(a.device)
        model.to(dev)
        shape = (a.batch, 3, flags["image_size"], flags["image_size"])
        peers = {}
        for threads in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(threads)
            with torch.no_grad():
                model(torch.randn(shape, device=dev), torch.zeros(a.batch, dtype=torch.int64, device=dev))  # warm-up
                t0 = time.perf_counter()
                loop(model, shape, a.ddim)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                peers[threads] = a.steps / (time.perf_counter() - t0)

        args = ["sample", "--model", a.model, "-o", os.path.join(tmp, "s.npz"), "--num-samples", str(a.batch), "--batch-size",
                str(a.batch), "--timestep-respacing", str(a.steps), "--device", a.device]
        out = diffseg(*(args + (["--use-ddim"] if a.ddim else [])))
        m = re.search(r"in (\d+) steps \(.*?, ([\d.]+) steps/s, ([\d.]+) after the first\)", out)
        ours, ours_steady = float(m.group(2)), float(m.group(3))
    peer = max(peers.values())
    lines = [
        f"sampling {a.steps} {'DDIM' if a.ddim else 'ancestral'} steps, batch {a.batch} at {flags['image_size']}², "
        f"{os.path.basename(a.model)}, {a.device}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
        f"peer: {'guided-diffusion' if a.official else 'reference PyTorch model'} (torch {torch.__version__})",
        "",
        "| | steps/s | time relative to the faster PyTorch |",
        "|---|---|---|",
        *[f"| PyTorch, {t} thread{'s' if t > 1 else ''} | {v:.2f} | {peer / v:.2f}× |" for t, v in peers.items()],
        f"| diffseg sample, every step | {ours:.2f} | {peer / ours:.2f}× |",
        f"| diffseg sample, after the first step (kernels compiled) | {ours_steady:.2f} | {peer / ours_steady:.2f}× |",
    ]
    print("\n".join(lines))
    if a.out:
        open(a.out, "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
