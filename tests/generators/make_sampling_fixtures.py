"""Generates tests/fixtures/guidance/* and tests/fixtures/superres/*: golden data of classifier guidance — guided-diffusion's
classifier_sample.py (EncoderUNetModel classifiers with the attention or the adaptive pool; condition_mean for the
ancestral sampler, condition_score for DDIM) — and of super-resolution — super_res_sample.py's sampling of a
SuperResModel from base samples, and super_res_train.py's loss and gradients — on small random models with recorded noise.

The data come from classifier_reference.py, adm_reference.py and diffusion_reference.py, which are first checked against
the official fixture (adm-tiny). With --official DIR (a folder holding guided-diffusion's guided_diffusion package, e.g.
`git archive` of its commit 22e0df8) every folder is also recomputed by guided-diffusion's own classes — its
EncoderUNetModel, create_model_and_diffusion and p_sample_loop / ddim_sample_loop with cond_fn, every th.randn_like
replaced by the next slice of the stack — and nothing is written unless both agree.

    /usr/bin/python3 tests/generators/make_sampling_fixtures.py [--official DIR]     (python3-torch 1.13, CPU)
"""
import copy
import json
import os
import shutil
import sys

import numpy as np
import torch

import adm_reference
import classifier_reference
from adm_reference import UNet, randomize
from classifier_reference import Classifier, SuperRes, cond_fn_of, guided_sample_loop
from diffusion_reference import ADM_TINY, Diffusion, check_against_official, rel_err, train_step
from make_train_fixtures import Float64

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures")
MAX_FOLDER_BYTES = 2_500_000

DEFAULTS = dict(image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1, num_head_channels=-1,
                attention_resolutions="16,8", channel_mult="", dropout=0.0, class_cond=False, use_checkpoint=False,
                use_scale_shift_norm=True, resblock_updown=False, use_fp16=False, use_new_attention_order=False,
                learn_sigma=False, diffusion_steps=1000, noise_schedule="linear", timestep_respacing="", use_kl=False,
                predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False)
CLASSIFIER_DEFAULTS = dict(image_size=64, classifier_use_fp16=False, classifier_width=128, classifier_depth=2,
                           classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
                           classifier_resblock_updown=True, classifier_pool="attention")

GUIDANCE = {
    # AttentionPool2d head (8×8 + 1 tokens, 2 heads of 16), resblock_updown, scale-shift; an unconditional ε-model with
    # learned variance. Ancestral (condition_mean: σ² = exp of the learned log variance) and DDIM with η 0 and 0.5
    # (condition_score) on the same "ddim5" steps of 100.
    "attention-pool": dict(
        flags=dict(image_size=16, num_channels=32, channel_mult="1,1", num_res_blocks=0, attention_resolutions="8",
                   num_head_channels=16, resblock_updown=True, learn_sigma=True, diffusion_steps=100,
                   timestep_respacing="ddim5"),
        classifier=dict(image_size=16, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="8",
                        classifier_channel_mult="1,1", classifier_num_head_channels=16),
        runs=dict(ancestral=dict(use_ddim=False, clip_denoised=False),
                  ddim=dict(use_ddim=True, eta=0.0, clip_denoised=False),
                  ddim_eta_clip=dict(use_ddim=True, eta=0.5, clip_denoised=True)),
        scale=8.0, n=3, y=[3, 998, 41], seed=31),
    # Adaptive pool (spatial mean, 1×1 conv), conv Downsample, no scale-shift; a class-conditional model with FIXED_LARGE
    # variance and rescale_timesteps (the classifier sees t·1000/T too), 200 cosine steps respaced "6".
    "adaptive-pool-classcond": dict(
        flags=dict(image_size=16, num_channels=32, channel_mult="1,1", num_res_blocks=0, attention_resolutions="8",
                   num_heads=2, class_cond=True, learn_sigma=False, diffusion_steps=200, noise_schedule="cosine",
                   rescale_timesteps=True, timestep_respacing="6"),
        classifier=dict(image_size=16, classifier_width=32, classifier_depth=1, classifier_attention_resolutions="8",
                        classifier_channel_mult="1,1", classifier_num_head_channels=32, classifier_pool="adaptive",
                        classifier_use_scale_shift_norm=False, classifier_resblock_updown=False),
        runs=dict(ancestral=dict(use_ddim=False, clip_denoised=True),
                  ddim=dict(use_ddim=True, eta=0.0, clip_denoised=False),
                  ddim_eta=dict(use_ddim=True, eta=0.5, clip_denoised=False)),
        scale=30.0, n=2, y=[7, 500], seed=32),
}


SUPERRES = {
    # 8 → 16 with learned variance, resblock_updown, 100 linear steps "ddim5"; 3 samples from 2 base images (the third
    # takes the first again, as super_res_sample.py cycles). The train/ folder: super_res_train.py's loss on a batch
    # whose low_res is the batch area-downsampled, and every gradient.
    "sr8to16": dict(
        flags=dict(large_size=16, small_size=8, num_channels=32, channel_mult="1,1", num_res_blocks=0, attention_resolutions="8",
                   num_head_channels=16, resblock_updown=True, learn_sigma=True, diffusion_steps=100),
        respacing="ddim5",
        runs=dict(ancestral=dict(use_ddim=False, clip_denoised=True),
                  ancestral_noclip=dict(use_ddim=False, clip_denoised=False),
                  ddim=dict(use_ddim=True, eta=0.0, clip_denoised=False)),
        n=3, base=2, train_t=[0, 40, 99], seed=41),
}


def official_classes(official):
    if official is None:
        return None
    sys.path.insert(0, official)
    import guided_diffusion.gaussian_diffusion as gd
    import guided_diffusion.script_util as su
    import guided_diffusion.unet as unet
    return gd, su, unet


def official_classifier(u, cf):
    size = cf["image_size"]
    mult = tuple(float(m) for m in cf["classifier_channel_mult"].split(","))
    return u.EncoderUNetModel(image_size=size, in_channels=3, model_channels=cf["classifier_width"], out_channels=1000,
                              num_res_blocks=cf["classifier_depth"],
                              attention_resolutions=tuple(size // int(r) for r in cf["classifier_attention_resolutions"].split(",")),
                              channel_mult=mult, num_head_channels=cf["classifier_num_head_channels"],
                              use_scale_shift_norm=cf["classifier_use_scale_shift_norm"],
                              resblock_updown=cf["classifier_resblock_updown"], pool=cf["classifier_pool"])


def official_sample(gd_mods, flags, classifier_sd, cf, model_sd, run, stack, y, scale):
    """guided-diffusion's own classes on the same weights and noise."""
    gd, su, u = gd_mods
    model, diffusion = su.create_model_and_diffusion(**{k: v for k, v in flags.items() if k != "timestep_respacing"},
                                                     timestep_respacing=run["timestep_respacing"])
    model.load_state_dict(model_sd, strict=True)
    model.eval()
    classifier = official_classifier(u, cf)
    classifier.load_state_dict(classifier_sd, strict=True)
    classifier.eval()
    draws = iter(stack[1:])
    real = torch.randn_like
    torch.randn_like = lambda x, *a, **k: next(draws).clone()
    try:
        model_fn = lambda x, t, y=None: model(x, t, y if flags["class_cond"] else None)
        loop = diffusion.ddim_sample_loop if run["use_ddim"] else diffusion.p_sample_loop
        kwargs = dict(eta=run["eta"]) if run["use_ddim"] else {}
        return loop(model_fn, tuple(stack[0].shape), noise=stack[0].clone(), clip_denoised=run["clip_denoised"],
                    model_kwargs=dict(y=y), cond_fn=cond_fn_of(classifier, scale), device="cpu", **kwargs)
    finally:
        torch.randn_like = real


def make_guidance(name, spec, gd_mods):
    flags = dict(DEFAULTS, **spec["flags"])
    cf = dict(CLASSIFIER_DEFAULTS, **spec["classifier"])
    gen = torch.Generator().manual_seed(spec["seed"])
    model = UNet(flags).eval()
    randomize(model, gen)
    classifier = Classifier(cf).eval()
    randomize(classifier, gen)
    n, size = spec["n"], flags["image_size"]
    y = torch.tensor(spec["y"], dtype=torch.int64)
    steps = Diffusion.from_flags(flags).num_timesteps
    stack = torch.randn((steps + 1, n, 3, size, size), generator=gen)
    d = os.path.join(OUT, "guidance", name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    json.dump(flags, open(os.path.join(d, "flags.json"), "w"), indent=1)
    json.dump(cf, open(os.path.join(d, "classifier_flags.json"), "w"), indent=1)
    torch.save(model.state_dict(), os.path.join(d, "model.pt"))
    torch.save(classifier.state_dict(), os.path.join(d, "classifier.pt"))
    np.save(os.path.join(d, "noise.npy"), stack.numpy())
    np.save(os.path.join(d, "y.npy"), y.numpy())

    # The classifier alone: logits and cond_fn (scale 1) at timesteps the samplers use.
    x = torch.randn((n, 3, size, size), generator=gen)
    t = torch.tensor([float(v) for v in Diffusion.from_flags(flags).timestep_map[-n:]])
    with torch.no_grad():
        logits = classifier(x, t)
    grad = cond_fn_of(classifier, 1.0)(x, t, y)
    for key, value in dict(x=x, t=t, logits=logits, grad=grad).items():
        np.save(os.path.join(d, f"classifier_{key}.npy"), value.numpy())

    meta, report = {}, []
    for run_name, r in spec["runs"].items():
        run = dict(timestep_respacing=flags["timestep_respacing"], use_ddim=r["use_ddim"])
        if r["use_ddim"]:
            run["eta"] = r["eta"]
        run.update(clip_denoised=r["clip_denoised"], noise="noise.npy", classifier_scale=spec["scale"])
        meta[run_name] = run
        diffusion = Diffusion.from_flags(flags, run["timestep_respacing"])
        model_y = y if flags["class_cond"] else None
        cond = cond_fn_of(classifier, spec["scale"])
        out = guided_sample_loop(diffusion, model, stack, r["clip_denoised"], r["use_ddim"], r.get("eta", 0.0), cond, y, model_y)
        plain = guided_sample_loop(diffusion, model, stack, r["clip_denoised"], r["use_ddim"], r.get("eta", 0.0), None, y, model_y)
        np.save(os.path.join(d, f"{run_name}_out.npy"), out.numpy())
        effect = rel_err(plain.numpy(), out.numpy())
        # How far these fp32 files are from the same computation in float64: a run whose own rounding drifts near the
        # tests' bound (1e-4) cannot check a port.
        with Float64():
            classifier_reference.sinusoid = adm_reference.sinusoid
            out64 = guided_sample_loop(diffusion, copy.deepcopy(model).double(), stack.double(), r["clip_denoised"], r["use_ddim"],
                                       r.get("eta", 0.0), cond_fn_of(copy.deepcopy(classifier).double(), spec["scale"]), y, model_y)
        classifier_reference.sinusoid = adm_reference.sinusoid
        drift = rel_err(out.numpy(), out64.numpy())
        assert drift <= 5e-5, f"{name}/{run_name}: fp64 drift {drift:.1e}: too ill-conditioned to check a port"
        # A run where guidance hardly moves the output would not tell a guided sampler from an unguided one.
        assert effect >= 1e-3, f"{name}/{run_name}: guidance moves the output by only {effect:.1e}"
        line = f"{run_name}: guidance moves the output by {effect:.1e} of max|x|, fp64 drift {drift:.1e}"
        if gd_mods is not None:
            official = official_sample(gd_mods, flags, classifier.state_dict(), cf, model.state_dict(), run, stack, y, spec["scale"])
            err = rel_err(out.numpy(), official.numpy())
            assert err <= 1e-6, f"{name}/{run_name}: the reference differs from guided-diffusion by {err:.1e}"
            line += f", official {err:.1e}"
        report.append(line)
    meta["num_samples"] = n
    meta["y"] = "y.npy"
    json.dump(meta, open(os.path.join(d, "sample.json"), "w"), indent=1)
    if gd_mods is not None:
        off = official_classifier(gd_mods[2], cf)
        off.load_state_dict(classifier.state_dict(), strict=True)
        off.eval()
        assert list(off.state_dict()) == list(classifier.state_dict()), "state_dict order differs from the official one"
        g_off = cond_fn_of(off, 1.0)(x, t, y)
        report.append(f"classifier gradient vs official {rel_err(grad.numpy(), g_off.numpy()):.1e}")
    size_b = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    assert size_b < MAX_FOLDER_BYTES, f"{name}: {size_b} bytes"
    print(f"guidance/{name}: model {sum(p.numel() for p in model.parameters()):,} + classifier "
          f"{sum(p.numel() for p in classifier.parameters()):,} params, {size_b / 1e6:.2f} MB; " + "; ".join(report))


def sr_model_flags(flags):
    """The UNet flags of a SuperResModel: image_size is large_size (sr_create_model)."""
    f = {k: v for k, v in flags.items() if k not in ("large_size", "small_size")}
    f["image_size"] = flags["large_size"]
    return f


def official_superres(u, flags):
    size = flags["large_size"]
    return u.SuperResModel(image_size=size, in_channels=3, model_channels=flags["num_channels"],
                           out_channels=6 if flags["learn_sigma"] else 3, num_res_blocks=flags["num_res_blocks"],
                           attention_resolutions=tuple(size // int(r) for r in flags["attention_resolutions"].split(",")),
                           channel_mult=tuple(int(m) for m in flags["channel_mult"].split(",")),
                           num_classes=1000 if flags["class_cond"] else None, num_heads=flags["num_heads"],
                           num_head_channels=flags["num_head_channels"], use_scale_shift_norm=flags["use_scale_shift_norm"],
                           resblock_updown=flags["resblock_updown"])


class WithLowRes(torch.nn.Module):
    """A SuperRes model with its low_res bound, for diffusion_reference's loss (it calls model(x, t))."""

    def __init__(self, model, low_res):
        super().__init__()
        self.model, self.low_res = model, low_res

    def forward(self, x, t, y=None):
        return self.model(x, t, low_res=self.low_res, y=y)


def make_superres(name, spec, gd_mods):
    flags = dict(DEFAULTS, **spec["flags"])
    del flags["image_size"]
    mflags = sr_model_flags(flags)
    gen = torch.Generator().manual_seed(spec["seed"])
    model = SuperRes(mflags).eval()
    randomize(model, gen)
    n, large, small = spec["n"], flags["large_size"], flags["small_size"]
    base = (torch.rand((spec["base"], small, small, 3), generator=gen) * 256).clamp(0, 255).to(torch.uint8)
    steps = Diffusion.from_flags(mflags, spec["respacing"]).num_timesteps
    stack = torch.randn((steps + 1, n, 3, large, large), generator=gen)
    d = os.path.join(OUT, "superres", name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "train"))
    json.dump(flags, open(os.path.join(d, "flags.json"), "w"), indent=1)
    torch.save(model.state_dict(), os.path.join(d, "model.pt"))
    np.savez(os.path.join(d, "base.npz"), base.numpy())
    np.save(os.path.join(d, "noise.npy"), stack.numpy())
    # super_res_sample.py: image i of the stream is base image i mod M, as floats b/127.5 - 1, channels first.
    low = torch.stack([base[i % len(base)] for i in range(n)]).float() / 127.5 - 1.0
    low = low.permute(0, 3, 1, 2)
    meta, report = {}, []
    for run_name, r in spec["runs"].items():
        run = dict(timestep_respacing=spec["respacing"], use_ddim=r["use_ddim"])
        if r["use_ddim"]:
            run["eta"] = r["eta"]
        run.update(clip_denoised=r["clip_denoised"], noise="noise.npy", base_samples="base.npz")
        meta[run_name] = run
        diffusion = Diffusion.from_flags(mflags, run["timestep_respacing"])
        out = guided_sample_loop(diffusion, model, stack, r["clip_denoised"], r["use_ddim"], r.get("eta", 0.0), None, None,
                                 low_res=low)
        np.save(os.path.join(d, f"{run_name}_out.npy"), out.numpy())
        line = run_name
        if gd_mods is not None:
            gd, su, u = gd_mods
            off = official_superres(u, flags)
            off.load_state_dict(model.state_dict(), strict=True)
            off.eval()
            off_diffusion = su.create_gaussian_diffusion(steps=flags["diffusion_steps"], learn_sigma=flags["learn_sigma"],
                                                         noise_schedule=flags["noise_schedule"],
                                                         timestep_respacing=run["timestep_respacing"])
            draws = iter(stack[1:])
            real = torch.randn_like
            torch.randn_like = lambda x, *a, **k: next(draws).clone()
            try:
                loop = off_diffusion.ddim_sample_loop if r["use_ddim"] else off_diffusion.p_sample_loop
                kwargs = dict(eta=r["eta"]) if r["use_ddim"] else {}
                official = loop(off, tuple(stack[0].shape), noise=stack[0].clone(), clip_denoised=r["clip_denoised"],
                                model_kwargs=dict(low_res=low), **kwargs)
            finally:
                torch.randn_like = real
            err = rel_err(out.numpy(), official.numpy())
            assert err <= 1e-6, f"{name}/{run_name}: the reference differs from guided-diffusion by {err:.1e}"
            line += f" official {err:.1e}"
        report.append(line)
    meta["num_samples"] = n
    json.dump(meta, open(os.path.join(d, "sample.json"), "w"), indent=1)

    # super_res_train.py: low_res = F.interpolate(batch, small_size, mode="area"), then training_losses.
    x0 = torch.rand((3, 3, large, large), generator=gen) * 2 - 1
    noise = torch.randn((3, 3, large, large), generator=gen)
    t = torch.tensor(spec["train_t"], dtype=torch.int64)
    low_res = torch.nn.functional.interpolate(x0, small, mode="area")
    train_flags = dict(mflags, timestep_respacing="")
    terms, grads = train_step(WithLowRes(model, low_res), Diffusion.from_flags(train_flags), x0, t, noise)
    grads = {k[len("model."):]: v for k, v in grads.items()}
    for key, value in dict(x_start=x0, noise=noise, t=t).items():
        np.save(os.path.join(d, "train", f"{key}.npy"), value.numpy())
    json.dump({k: float(v.mean()) for k, v in terms.items()}, open(os.path.join(d, "train", "loss.json"), "w"), indent=1)
    np.savez(os.path.join(d, "train", "grads.npz"), **grads)
    if gd_mods is not None:
        gd, su, u = gd_mods
        off = official_superres(u, flags)
        off.load_state_dict(model.state_dict(), strict=True)
        off.train()
        off_diffusion = su.create_gaussian_diffusion(steps=flags["diffusion_steps"], learn_sigma=flags["learn_sigma"],
                                                     noise_schedule=flags["noise_schedule"], timestep_respacing="")
        off_terms = off_diffusion.training_losses(off, x0, t, model_kwargs=dict(low_res=low_res), noise=noise)
        off_terms["loss"].mean().backward()
        loss_err = abs(float(off_terms["loss"].mean()) - float(terms["loss"].mean()))
        grad_err = max(rel_err(grads[k], p.grad.numpy()) for k, p in off.named_parameters())
        assert loss_err <= 1e-7 and grad_err <= 1e-6, f"{name}/train: loss {loss_err:.1e}, gradients {grad_err:.1e} from guided-diffusion"
        report.append(f"train: loss {float(terms['loss'].mean()):.6g}, official loss {loss_err:.1e}, gradients {grad_err:.1e}")
    size_b = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
    assert size_b < MAX_FOLDER_BYTES, f"{name}: {size_b} bytes"
    print(f"superres/{name}: {sum(p.numel() for p in model.parameters()):,} params, {size_b / 1e6:.2f} MB; " + "; ".join(report))


if __name__ == "__main__":
    torch.set_num_threads(1)
    official = sys.argv[sys.argv.index("--official") + 1] if "--official" in sys.argv else None
    check_against_official(ADM_TINY, verbose=False)
    mods = official_classes(official)
    for name, spec in GUIDANCE.items():
        make_guidance(name, spec, mods)
    for name, spec in SUPERRES.items():
        make_superres(name, spec, mods)
