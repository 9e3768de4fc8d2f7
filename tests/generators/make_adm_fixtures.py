"""Generates tests/fixtures/adm-configs/*: small ADM UNets on the paths adm-tiny does not take, with golden outputs
from adm_reference.py (itself checked bit-exact against the official adm-tiny fixture), and
tests/fixtures/adm-inventories.json: every state_dict key and shape of the published ADM configurations.

    /usr/bin/python3 tests/generators/make_adm_fixtures.py        (Debian python3-torch 1.13, CPU)
"""
import json
import os

import numpy as np
import torch

from adm_reference import UNet, check_against_official, randomize

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures")

DEFAULTS = dict(image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1, num_head_channels=-1,
                attention_resolutions="16,8", channel_mult="", dropout=0.0, class_cond=False, use_checkpoint=False,
                use_scale_shift_norm=True, resblock_updown=False, use_fp16=False, use_new_attention_order=False,
                learn_sigma=False, diffusion_steps=1000, noise_schedule="linear", timestep_respacing="", use_kl=False,
                predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False)

CONFIGS = {
    # No scale-shift (h + emb), conv Downsample/Upsample ("op"/"conv" keys), num_heads without head channels,
    # a different head count upsampling, 3 output channels.
    "plain": dict(flags=dict(image_size=16, num_channels=32, channel_mult="1,2", num_res_blocks=1, attention_resolutions="8",
                             num_heads=2, num_heads_upsample=1, use_scale_shift_norm=False, resblock_updown=False,
                             learn_sigma=False),
                  x=(2, 16, 16), t=[5, 400], y=None, half=False, wrap=False),
    # New attention order, class-conditional, attention at full resolution, fp16 storages wrapped in {"state_dict": ...},
    # an input smaller than image_size.
    "neworder-classcond": dict(flags=dict(image_size=32, num_channels=32, channel_mult="1,1,2", num_res_blocks=1,
                                          attention_resolutions="32,8", num_head_channels=8, use_new_attention_order=True,
                                          class_cond=True, resblock_updown=True, use_scale_shift_norm=True, learn_sigma=True,
                                          dropout=0.1),
                               x=(2, 16, 16), t=[0, 999], y=[3, 999], half=True, wrap=True),
}

# The published checkpoints' flags (guided-diffusion README; ddpm-segmentation's scripts for LSUN/FFHQ).
PUBLISHED = {
    "lsun_256": dict(attention_resolutions="32,16,8", class_cond=False, diffusion_steps=1000, dropout=0.1, image_size=256,
                     learn_sigma=True, noise_schedule="linear", num_channels=256, num_head_channels=64, num_res_blocks=2,
                     resblock_updown=True, use_fp16=True, use_scale_shift_norm=True),
    "imagenet_256_uncond": dict(attention_resolutions="32,16,8", class_cond=False, diffusion_steps=1000, image_size=256,
                                learn_sigma=True, noise_schedule="linear", num_channels=256, num_head_channels=64,
                                num_res_blocks=2, resblock_updown=True, use_fp16=True, use_scale_shift_norm=True),
    "imagenet_256_cond": dict(attention_resolutions="32,16,8", class_cond=True, diffusion_steps=1000, image_size=256,
                              learn_sigma=True, noise_schedule="linear", num_channels=256, num_head_channels=64,
                              num_res_blocks=2, resblock_updown=True, use_fp16=True, use_scale_shift_norm=True),
    "imagenet_512_cond": dict(attention_resolutions="32,16,8", class_cond=True, diffusion_steps=1000, image_size=512,
                              learn_sigma=True, noise_schedule="linear", num_channels=256, num_head_channels=64,
                              num_res_blocks=2, resblock_updown=True, use_fp16=False, use_scale_shift_norm=True),
    "imagenet_128_cond": dict(attention_resolutions="32,16,8", class_cond=True, diffusion_steps=1000, image_size=128,
                              learn_sigma=True, noise_schedule="linear", num_channels=256, num_heads=4, num_res_blocks=2,
                              resblock_updown=True, use_fp16=True, use_scale_shift_norm=True),
    "imagenet_64_cond": dict(attention_resolutions="32,16,8", class_cond=True, diffusion_steps=1000, dropout=0.1, image_size=64,
                             learn_sigma=True, noise_schedule="cosine", num_channels=192, num_head_channels=64,
                             num_res_blocks=3, resblock_updown=True, use_new_attention_order=True, use_fp16=True,
                             use_scale_shift_norm=True),
}


def make_config(name, spec):
    flags = dict(DEFAULTS, **spec["flags"])
    gen = torch.Generator().manual_seed(1234)
    model = UNet(flags).eval()
    randomize(model, gen)
    if spec["half"]:
        model = model.half().float()  # the golden outputs use the fp16-rounded weights the checkpoint stores
    n, h, w = spec["x"]
    x0 = (torch.rand((n, 3, h, w), generator=gen) * 2 - 1).float()
    t = torch.tensor(spec["t"], dtype=torch.int64)
    y = torch.tensor(spec["y"], dtype=torch.int64) if spec["y"] is not None else None
    captured = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o.detach().clone()))
             for k, b in enumerate(model.output_blocks)]
    with torch.no_grad():
        eps = model(x0, t, y)
    for hk in hooks:
        hk.remove()
    d = os.path.join(OUT, "adm-configs", name)
    os.makedirs(d, exist_ok=True)
    sd = model.state_dict()
    if spec["half"]:
        sd = {k: v.half() for k, v in sd.items()}
    torch.save({"state_dict": sd} if spec["wrap"] else sd, os.path.join(d, "model.pt"))
    json.dump({k: flags[k] for k in spec["flags"]}, open(os.path.join(d, "flags.json"), "w"), indent=1)
    np.save(os.path.join(d, "x0.npy"), x0.numpy())
    np.save(os.path.join(d, "t.npy"), t.numpy())
    if y is not None:
        np.save(os.path.join(d, "y.npy"), y.numpy())
    np.save(os.path.join(d, "eps.npy"), eps.numpy())
    for k, v in captured.items():
        np.save(os.path.join(d, f"out_block_{k}.npy"), v.numpy())
    print(f"{name}: {sum(p.numel() for p in model.parameters()):,} parameters, {len(captured)} decoder blocks")


def make_inventories():
    inventory = {}
    for name, spec in PUBLISHED.items():
        flags = dict(DEFAULTS, **spec)
        with torch.device("meta") if hasattr(torch, "device") and hasattr(torch.device, "__enter__") else _NoInit():
            model = UNet(flags)
        keys = [[k, list(v.shape)] for k, v in model.state_dict().items()]
        inventory[name] = dict(flags=spec, parameters=sum(int(np.prod(s)) for _, s in keys), keys=keys)
        print(f"{name}: {len(keys)} tensors, {inventory[name]['parameters']:,} parameters")
    json.dump(inventory, open(os.path.join(OUT, "adm-inventories.json"), "w"), separators=(",", ":"))


class _NoInit:
    """torch 1.13 has no meta-device context manager: skip the expensive random init instead."""

    def __enter__(self):
        self.saved = [torch.nn.init.kaiming_uniform_, torch.nn.init.uniform_, torch.nn.init.normal_]
        torch.nn.init.kaiming_uniform_ = lambda t, *a, **k: t
        torch.nn.init.uniform_ = lambda t, *a, **k: t
        torch.nn.init.normal_ = lambda t, *a, **k: t

    def __exit__(self, *exc):
        torch.nn.init.kaiming_uniform_, torch.nn.init.uniform_, torch.nn.init.normal_ = self.saved


if __name__ == "__main__":
    check_against_official(os.path.join(HERE, "..", "fixtures", "adm-tiny"))
    for name, spec in CONFIGS.items():
        make_config(name, spec)
    make_inventories()
