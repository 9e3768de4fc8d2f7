"""An independent PyTorch model of guided-diffusion's noisy-image classifier (EncoderUNetModel as create_classifier
builds it, with the AttentionPool2d or adaptive-pool head) and of its super-resolution UNet, written from their
description (docs/method.md, Classifier guidance and super-resolution), used only to generate golden data.

It keeps guided-diffusion's module structure and state_dict names so official checkpoints load into it;
make_sampling_fixtures.py checks it against guided-diffusion's own classes when their source is at hand.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from adm_reference import DEFAULT_MULT, UNet, Attn, Down, Norm32, Res, Seq, sinusoid


class AttentionPool(nn.Module):
    """[mean, pixels] tokens + a positional embedding, qkv_proj, attention in the new (q, k, v) order, c_proj; token 0."""

    def __init__(self, spacial_dim, embed_dim, head_channels, out_dim):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(embed_dim, spacial_dim ** 2 + 1) / embed_dim ** 0.5)
        self.qkv_proj = nn.Conv1d(embed_dim, 3 * embed_dim, 1)
        self.c_proj = nn.Conv1d(embed_dim, out_dim, 1)
        self.attend = Attn(embed_dim, -1, head_channels, True).attend  # only its attention, in the new order
        self.heads = embed_dim // head_channels

    def forward(self, x):
        b, c = x.shape[:2]
        x = x.reshape(b, c, -1)
        x = torch.cat([x.mean(dim=-1, keepdim=True), x], dim=-1) + self.positional_embedding[None].to(x.dtype)
        return self.c_proj(self.attend(self.qkv_proj(x)))[:, :, 0]


class Classifier(nn.Module):
    """EncoderUNetModel(in 3, out 1000, num_heads 1) from the classifier_* flags; ours: classifier_channel_mult and
    classifier_num_head_channels (guided-diffusion: by image_size, and 64)."""

    def __init__(self, f):
        super().__init__()
        mc, size = f["classifier_width"], f["image_size"]
        cm = f.get("classifier_channel_mult", "")
        mult = DEFAULT_MULT[size] if cm == "" else tuple(float(m) for m in cm.split(","))
        attn = {size // int(r) for r in f["classifier_attention_resolutions"].split(",")}
        head_ch = f.get("classifier_num_head_channels", 64)
        ss, updown = f["classifier_use_scale_shift_norm"], f["classifier_resblock_updown"]
        emb = 4 * mc
        self.mc = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = int(mult[0] * mc)
        self.input_blocks = nn.ModuleList([Seq(nn.Conv2d(3, ch, 3, padding=1))])
        ds = 1
        for level, m in enumerate(mult):
            for _ in range(f["classifier_depth"]):
                layers = [Res(ch, emb, int(m * mc), ss)]
                ch = int(m * mc)
                if ds in attn:
                    layers.append(Attn(ch, 1, head_ch, False))
                self.input_blocks.append(Seq(*layers))
            if level != len(mult) - 1:
                self.input_blocks.append(Seq(Res(ch, emb, ch, ss, down=True) if updown else Down(ch, True, ch)))
                ds *= 2
        self.middle_block = Seq(Res(ch, emb, ch, ss), Attn(ch, 1, head_ch, False), Res(ch, emb, ch, ss))
        if f["classifier_pool"] == "attention":
            self.out = nn.Sequential(Norm32(ch), nn.SiLU(), AttentionPool(size // ds, ch, head_ch, 1000))
        else:
            self.out = nn.Sequential(Norm32(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Conv2d(ch, 1000, 1), nn.Flatten())

    def forward(self, x, t):
        emb = self.time_embed(sinusoid(t, self.mc))
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
        return self.out(self.middle_block(h, emb))


class SuperRes(UNet):
    """SuperResModel: the UNet on 6 channels, x then the low-resolution image upsampled bilinearly to x's size."""

    def __init__(self, f):
        super().__init__(f)
        first = self.input_blocks[0][0]
        self.input_blocks[0][0] = nn.Conv2d(6, first.out_channels, 3, padding=1)

    def forward(self, x, t, low_res=None, y=None):
        up = F.interpolate(low_res, x.shape[2:], mode="bilinear")
        return super().forward(torch.cat([x, up], dim=1), t, y)


def cond_fn_of(classifier, scale):
    """classifier_sample.py's cond_fn: scale · ∇_x Σ log softmax(classifier(x, t))[y]."""
    def cond_fn(x, t, y=None):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(classifier(x_in, t), dim=-1)
            selected = log_probs[range(len(log_probs)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * scale
    return cond_fn


def guided_sample_loop(diffusion, model, noise_stack, clip_denoised, use_ddim, eta, cond_fn, y, model_y=None, low_res=None):
    """p_sample_loop / ddim_sample_loop of diffusion_reference.Diffusion with cond_fn (condition_mean, condition_score)
    and a super-resolution model's low_res: noise_stack[0] is x_T, noise_stack[k + 1] the draw of step k."""
    from diffusion_reference import _take
    x = noise_stack[0]

    def call(xx, t):
        kwargs = {} if low_res is None else dict(low_res=low_res)
        mapped = torch.tensor(diffusion.timestep_map, dtype=t.dtype)[t]
        if diffusion.rescale_timesteps:
            mapped = mapped.float() * (1000.0 / diffusion.original_steps)
        if model_y is not None:
            kwargs["y"] = model_y
        return model(xx, mapped, **kwargs), mapped

    with torch.no_grad():
        for k, i in enumerate(reversed(range(diffusion.num_timesteps))):
            t = torch.full((x.shape[0],), i, dtype=torch.int64)
            out, mapped = call(x, t)
            p = diffusion.p_mean_variance_from_output(out, x, t, clip_denoised)
            z = noise_stack[k + 1]
            keep = (t != 0).float().view(-1, 1, 1, 1)
            if not use_ddim:
                if cond_fn is not None:
                    p["mean"] = p["mean"].float() + p["variance"] * cond_fn(x, mapped, y).float()
                x = p["mean"] + keep * torch.exp(0.5 * p["log_variance"]) * z
                continue
            if cond_fn is not None:
                a = _take(diffusion.alphas_cumprod, t, x)
                eps = diffusion.predict_eps_from_xstart(x, t, p["pred_xstart"])
                eps = eps - (1 - a).sqrt() * cond_fn(x, mapped, y)
                p["pred_xstart"] = diffusion.predict_xstart_from_eps(x, t, eps)
            eps = diffusion.predict_eps_from_xstart(x, t, p["pred_xstart"])
            a = _take(diffusion.alphas_cumprod, t, x)
            a_prev = _take(diffusion.alphas_cumprod_prev, t, x)
            sigma = eta * torch.sqrt((1 - a_prev) / (1 - a)) * torch.sqrt(1 - a / a_prev)
            x = p["pred_xstart"] * torch.sqrt(a_prev) + torch.sqrt(1 - a_prev - sigma ** 2) * eps + keep * sigma * z
    return x
