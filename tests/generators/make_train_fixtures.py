"""Generates tests/fixtures/train-configs/* and tests/fixtures/sample-configs/*: golden training losses, gradients and
sampler outputs of guided-diffusion for flag combinations the official adm-tiny/{train,sample} do not cover.

The data come from diffusion_reference.py and adm_reference.py. Before anything is written, both are checked against
the official fixture (adm-tiny/train: loss terms and every gradient; adm-tiny/sample: three sampler runs); if that
check fails nothing is written. Every folder is also rerun in float64 to measure how far a correct fp32 computation
can drift from these files (printed, and quoted in the READMEs).

    /usr/bin/python3 tests/generators/make_train_fixtures.py        (Debian python3-torch 1.13, CPU; about a minute)
"""
import copy
import json
import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F

import adm_reference
from adm_reference import UNet, randomize
from diffusion_reference import (ADM_TINY, Diffusion, check_against_official, compare_sample, compare_train, rel_err,
                                 run_sampler, train_step)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures")
MAX_FOLDER_BYTES = 1_500_000

# Every flag create_model_and_diffusion takes, at guided-diffusion's defaults (script_util), in adm-tiny's order.
DEFAULTS = dict(image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1, num_head_channels=-1,
                attention_resolutions="16,8", channel_mult="", dropout=0.0, class_cond=False, use_checkpoint=False,
                use_scale_shift_norm=True, resblock_updown=False, use_fp16=False, use_new_attention_order=False,
                learn_sigma=False, diffusion_steps=1000, noise_schedule="linear", timestep_respacing="", use_kl=False,
                predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False)
# sigma_small (FIXED_SMALL variance) is an argument of create_gaussian_diffusion only: guided-diffusion's
# model_and_diffusion_defaults and create_model_and_diffusion do not have it, so it is written only where it is true.

# Training configurations. Sizes are bounded by MAX_FOLDER_BYTES (model.pt + grads.npz are 8 bytes a parameter), so the
# UNets are as small as guided-diffusion allows (32 channels is GroupNorm(32)'s minimum; num_res_blocks 0 is legal).
TRAIN = {
    # RESCALED_MSE (vb × T/1000 = 0.25), cosine schedule, t fed as float t·1000/T, class labels, new attention order.
    "cosine-classcond-rescaled-mse": dict(
        flags=dict(image_size=16, num_channels=32, channel_mult="1", num_res_blocks=0, attention_resolutions="8",
                   num_head_channels=16, use_new_attention_order=True, class_cond=True, use_scale_shift_norm=True,
                   learn_sigma=True, diffusion_steps=250, noise_schedule="cosine", rescale_learned_sigmas=True,
                   rescale_timesteps=True),
        t=[0, 117, 249], y=[7, 999, 0], seed=11),
    # RESCALED_KL (loss = vb of the whole output × 1000, no mse), legacy attention with 4 heads, num_res_blocks 1.
    "kl-learnsigma": dict(
        flags=dict(image_size=16, num_channels=32, channel_mult="1", num_res_blocks=1, attention_resolutions="8",
                   num_head_channels=8, use_scale_shift_norm=True, learn_sigma=True, use_kl=True),
        t=[0, 431, 999], seed=12, eps_near_prediction=0.3),
    # Plain MSE against x_start (START_X), 3 output channels, h + emb ResBlocks, conv Downsample/Upsample, num_heads.
    # channel_mult "1,2" because without scale-shift a 32-channel block cancels its timestep embedding exactly (the
    # GroupNorm that follows has one channel per group): the 64-channel decoder block is the one where h + emb acts.
    "mse-xstart-plain": dict(
        flags=dict(image_size=16, num_channels=32, channel_mult="1,2", num_res_blocks=0, attention_resolutions="4",
                   num_heads=2, use_scale_shift_norm=False, resblock_updown=False, learn_sigma=False,
                   predict_xstart=True),
        t=[0, 640, 999], seed=13, max_bytes=2_000_000),
    # adm-tiny's blocks (legacy attention, head channels, scale-shift, learn_sigma, 32×32) at 500 steps with use_kl:
    # the linear schedule is stretched ×2 and RESCALED_KL multiplies by 500. Conv down/up and attention only in the
    # middle block to stay under the size cap (adm-tiny/train itself covers resblock_updown with scale-shift).
    "kl-500steps": dict(
        flags=dict(image_size=32, num_channels=32, channel_mult="1,1", num_res_blocks=0, attention_resolutions="8",
                   num_heads=4, num_head_channels=16, use_scale_shift_norm=True, resblock_updown=False,
                   learn_sigma=True, diffusion_steps=500, use_kl=True),
        t=[0, 250, 499], seed=14, eps_near_prediction=0.3),
}

# Sampling configurations: each run = (respacing, sampler, eta, clip); runs of one folder share the respacing and so
# one noise stack. Runs with clip_denoised true end on the clipped x0 (mostly ±1 with random weights), so each such
# folder also has a run without clipping that checks every value.
SAMPLE = {
    # Section respacing "4,3" of 100 steps keeps 0,16,33,49 | 50,74,99 (74 = 50 + round(24.5): half to even).
    "classcond-sections": dict(
        flags=dict(image_size=16, num_channels=32, channel_mult="1", num_res_blocks=1, attention_resolutions="16",
                   num_head_channels=16, use_new_attention_order=True, class_cond=True, learn_sigma=True,
                   diffusion_steps=100, timestep_respacing="4,3"),
        runs=dict(ancestral=dict(use_ddim=False, clip_denoised=True),
                  ancestral_noclip=dict(use_ddim=False, clip_denoised=False)),
        n=3, y=[5, 999, 0], seed=21),
    # FIXED_LARGE variance (learn_sigma false), "10" of 1000 cosine steps.
    "fixedlarge-ancestral": dict(
        flags=dict(image_size=16, num_channels=32, channel_mult="1,1", num_res_blocks=0, attention_resolutions="8",
                   num_heads=2, resblock_updown=True, learn_sigma=False, noise_schedule="cosine",
                   timestep_respacing="10"),
        runs=dict(ancestral=dict(use_ddim=False, clip_denoised=True),
                  ancestral_noclip=dict(use_ddim=False, clip_denoised=False)),
        n=2, seed=22),
    # FIXED_SMALL (sigma_small) — DDIM with eta 0.5 (draws noise, ignores the model variance) and, to use the
    # FIXED_SMALL variance, the ancestral sampler on the same "ddim5" steps of 100.
    "fixedsmall-ddim-eta": dict(
        flags=dict(image_size=16, num_channels=32, channel_mult="1,1", num_res_blocks=1, attention_resolutions="8",
                   num_heads=2, learn_sigma=False, sigma_small=True, diffusion_steps=100,
                   timestep_respacing="ddim5"),
        runs=dict(ddim_eta=dict(use_ddim=True, eta=0.5, clip_denoised=False),
                  ancestral=dict(use_ddim=False, clip_denoised=False)),
        n=3, seed=23),
    # START_X model (6 channels: x0 then the variance half), t rescaled to 1000/200 = ×5 as floats, "ddim8" of 200.
    "xstart-rescaled-ddim": dict(
        flags=dict(image_size=16, num_channels=32, channel_mult="1,1", num_res_blocks=0, attention_resolutions="8",
                   num_head_channels=16, resblock_updown=True, learn_sigma=True, predict_xstart=True,
                   rescale_timesteps=True, diffusion_steps=200, timestep_respacing="ddim8"),
        runs=dict(ddim=dict(use_ddim=True, eta=0.0, clip_denoised=True),
                  ddim_noclip=dict(use_ddim=True, eta=0.0, clip_denoised=False),
                  ancestral_noclip=dict(use_ddim=False, clip_denoised=False)),
        n=2, seed=24),
}


def make_model(flags, gen):
    model = UNet(flags)
    randomize(model, gen)
    return model


def image_batch(n, size, gen):
    """Data as guided-diffusion sees it: uint8 levels k/127.5 − 1 (so the decoder NLL's edge bins ±1 occur)."""
    return (torch.randint(0, 256, (n, 3, size, size), generator=gen).double() / 127.5 - 1).float()


def noise_near_prediction(model, diffusion, x0, t, noise, y, spread, gen):
    """For the t = 0 samples: ε = ε̂ + spread·N, ε̂ the model's own prediction at x_t(ε) (a few fixed-point steps;
    x_t barely depends on ε at t = 0). With an arbitrary ε a random model's decoder NLL sits in the Gaussian tails,
    where the original fp32 formula (differences of tanh-based CDFs near 0 or 1) loses up to 1e-3..1e-1 of the
    gradient, so no port could be held to these files; near its own prediction it keeps about 1e-5."""
    noise = noise.clone()
    jitter = torch.randn(noise.shape, generator=gen)
    first = t == 0
    for _ in range(3):
        with torch.no_grad():
            eps_hat = diffusion.call_model(model, diffusion.q_sample(x0, t, noise), t, y)[:, :3]
        noise[first] = eps_hat[first] + spread * jitter[first]
    return noise


def folder_size(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def write_common(d, flags, model):
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    json.dump(flags, open(os.path.join(d, "flags.json"), "w"), indent=1)
    torch.save(model.state_dict(), os.path.join(d, "model.pt"))


# -- float64 reruns: how far an exact fp32 computation may be from these files -------------------------------------

class Float64:
    """Runs adm_reference's UNet in float64 (its GroupNorm and timestep embedding pin float32; softmax stays fp32)."""

    def __enter__(self):
        self.saved = adm_reference.Norm32.forward, adm_reference.sinusoid
        adm_reference.Norm32.forward = lambda m, x: F.group_norm(x, m.num_groups, m.weight, m.bias, m.eps)
        adm_reference.sinusoid = lambda t, dim, max_period=10000: _sinusoid64(t, dim, max_period)
        return self

    def __exit__(self, *exc):
        adm_reference.Norm32.forward, adm_reference.sinusoid = self.saved


def _sinusoid64(t, dim, max_period):
    half = dim // 2
    freqs = torch.exp(-np.log(max_period) * torch.arange(0, half, dtype=torch.float64) / half)
    args = t[:, None].double() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def grad_errors(grads, ref):
    """Per tensor max|g − ref| / max(max|ref|, 1e-2·G), G the largest |ref| of all tensors. The floor matters only for
    gradients that are zero in exact arithmetic and rounding noise in fp32 (the bias of a conv whose output goes
    straight into a GroupNorm with one channel per group: every 32-channel block)."""
    floor = 1e-2 * max(float(np.abs(r).max()) for r in ref.values())
    return {k: float(np.abs(np.asarray(grads[k], np.float64) - ref[k]).max() / max(float(np.abs(ref[k]).max()), floor))
            for k in ref}


def train_drift(model, diffusion, x0, t, noise, y, terms, grads):
    """Worst relative difference of the loss terms (means and per sample) and of the gradients (grad_errors) between
    this fp32 computation and the same one in float64."""
    m64 = copy.deepcopy(model).double()
    with Float64():
        t64, g64 = train_step(m64, diffusion, x0.double(), t, noise.double(), y)
    loss = max(max(abs(float(terms[k].mean()) - float(t64[k].mean())) / abs(float(t64[k].mean())),
                   float(((terms[k].double() - t64[k]).abs() / t64[k].abs()).max())) for k in terms)
    G = max(float(np.abs(g).max()) for g in g64.values())
    zero = [k for k, g in g64.items() if float(np.abs(g).max()) < 1e-9 * G]
    errs = grad_errors(grads, g64)
    live = max(v for k, v in errs.items() if k not in zero)
    dead = max([v for k, v in errs.items() if k in zero], default=0.0)
    return loss, (live, dead), zero


def official_drift():
    """The same float64 rerun for the official adm-tiny/train, for the tolerance quoted in the READMEs."""
    flags = json.load(open(os.path.join(ADM_TINY, "flags.json")))
    model = UNet(flags)
    model.load_state_dict(torch.load(os.path.join(ADM_TINY, "model.pt")), strict=True)
    f = {k: torch.from_numpy(np.load(os.path.join(ADM_TINY, "train", k + ".npy"))) for k in ("x_start", "t", "noise")}
    diffusion = Diffusion.from_flags(flags)
    terms, grads = train_step(model, diffusion, f["x_start"], f["t"], f["noise"])
    loss, grad, zero = train_drift(model, diffusion, f["x_start"], f["t"], f["noise"], None, terms, grads)
    print(f"official adm-tiny/train vs a float64 rerun: loss terms {loss:.1e}, worst gradient (grad_errors) {grad[0]:.1e}, "
          f"of those zero in exact arithmetic {grad[1]:.1e}; "
          f"{len(zero)} gradients zero in exact arithmetic: {', '.join(zero)}")


# -- folders ---------------------------------------------------------------------------------------------------------

def make_train(name, spec):
    flags = dict(DEFAULTS, **spec["flags"])
    gen = torch.Generator().manual_seed(spec["seed"])
    model = make_model(flags, gen)
    n, size = len(spec["t"]), flags["image_size"]
    x0 = image_batch(n, size, gen)
    noise = torch.randn((n, 3, size, size), generator=gen)
    t = torch.tensor(spec["t"], dtype=torch.int64)
    y = torch.tensor(spec["y"], dtype=torch.int64) if "y" in spec else None
    diffusion = Diffusion.from_flags(flags)
    if "eps_near_prediction" in spec:
        noise = noise_near_prediction(model, diffusion, x0, t, noise, y, spec["eps_near_prediction"], gen)
    assert diffusion.timestep_map == list(range(flags["diffusion_steps"]))
    terms, grads = train_step(model, diffusion, x0, t, noise, y)
    silent = [k for k, g in grads.items() if not np.any(g)]
    assert not silent, f"{name}: parameters without gradient: {silent}"

    d = os.path.join(OUT, "train-configs", name)
    write_common(d, flags, model)
    np.save(os.path.join(d, "x_start.npy"), x0.numpy())
    np.save(os.path.join(d, "noise.npy"), noise.numpy())
    np.save(os.path.join(d, "t.npy"), t.numpy())
    if y is not None:
        np.save(os.path.join(d, "y.npy"), y.numpy())
    order = [k for k in ("vb", "mse", "loss") if k in terms]
    loss = {k: float(terms[k].mean()) for k in order}
    loss["per_sample"] = {k: [float(v) for v in terms[k]] for k in order}
    json.dump(loss, open(os.path.join(d, "loss.json"), "w"), indent=1)
    # Deflate-compressed: the label_emb gradient is zero outside the rows of y (np.load and .NET's ZipArchive read it).
    np.savez_compressed(os.path.join(d, "grads.npz"), **grads)

    # Written files reread and recomputed from them: the folder is self-consistent.
    re_model = UNet(json.load(open(os.path.join(d, "flags.json"))))
    re_model.load_state_dict(torch.load(os.path.join(d, "model.pt")), strict=True)
    loss_err, grad_err = compare_train(re_model, flags, d, y)
    assert max(loss_err.values()) == 0 and max(grad_err.values()) == 0, f"{name}: rerun from the files differs"

    drift_loss, drift_grad, zero = train_drift(model, diffusion, x0, t, noise, y, terms, grads)
    size_b = folder_size(d)
    assert size_b < spec.get("max_bytes", MAX_FOLDER_BYTES), f"{name}: {size_b} bytes"
    params = sum(p.numel() for p in model.parameters())
    print(f"train-configs/{name}: {params:,} params, {size_b / 1e6:.2f} MB, loss type {diffusion.loss_type}, "
          f"var {diffusion.var_type}, mean {diffusion.mean_type}; loss {loss['loss']:.6g}; "
          f"fp64 drift: loss {drift_loss:.1e}, worst grad {drift_grad[0]:.1e}, of those zero in "
          f"exact arithmetic {drift_grad[1]:.1e}; {len(zero)} gradients zero in exact "
          f"arithmetic: {', '.join(zero)}")


def make_sample(name, spec):
    flags = dict(DEFAULTS, **spec["flags"])
    gen = torch.Generator().manual_seed(spec["seed"])
    model = make_model(flags, gen).eval()
    n, size, resp = spec["n"], flags["image_size"], flags["timestep_respacing"]
    steps = Diffusion.from_flags(flags).num_timesteps
    y = torch.tensor(spec["y"], dtype=torch.int64) if "y" in spec else None

    d = os.path.join(OUT, "sample-configs", name)
    write_common(d, flags, model)
    stack = torch.randn((steps + 1, n, 3, size, size), generator=gen)
    np.save(os.path.join(d, "noise.npy"), stack.numpy())
    if y is not None:
        np.save(os.path.join(d, "y.npy"), y.numpy())
    meta, report = {}, []
    for run_name, r in spec["runs"].items():
        run = dict(timestep_respacing=resp, use_ddim=r["use_ddim"])
        if r["use_ddim"]:
            run["eta"] = r["eta"]
        run.update(clip_denoised=r["clip_denoised"], noise="noise.npy")
        meta[run_name] = run
        out = run_sampler(model, flags, run, stack, y)
        np.save(os.path.join(d, f"{run_name}_out.npy"), out.numpy())
        with Float64():
            out64 = run_sampler(copy.deepcopy(model).double(), flags, run, stack.double(), y)
        saturated = float((out.abs() >= 1).float().mean())
        report.append(f"{run_name} {rel_err(out.numpy(), out64.numpy()):.1e} (|x|>=1: {saturated:.0%})")
    meta["num_samples"] = n
    if y is not None:
        meta["y"] = "y.npy"
    json.dump(meta, open(os.path.join(d, "sample.json"), "w"), indent=1)

    re_model = UNet(json.load(open(os.path.join(d, "flags.json"))))
    re_model.load_state_dict(torch.load(os.path.join(d, "model.pt")), strict=True)
    errs = compare_sample(re_model, flags, d, y)
    assert max(errs.values()) == 0, f"{name}: rerun from the files differs: {errs}"

    size_b = folder_size(d)
    assert size_b < MAX_FOLDER_BYTES, f"{name}: {size_b} bytes"
    kept = Diffusion.from_flags(flags).timestep_map
    print(f"sample-configs/{name}: {sum(p.numel() for p in model.parameters()):,} params, {size_b / 1e6:.2f} MB, "
          f"{steps} steps {kept}; fp64 drift: " + ", ".join(report))


if __name__ == "__main__":
    torch.set_num_threads(1)
    # Refuse to write anything unless the references reproduce the official fixtures.
    check_against_official(ADM_TINY)
    official_drift()
    for name, spec in TRAIN.items():
        make_train(name, spec)
    for name, spec in SAMPLE.items():
        make_sample(name, spec)
