"""An independent PyTorch model of the ADM UNet, written from its description (docs/method.md, The ADM UNet), used only to
generate golden tensors for flag combinations the official fixture does not cover.

It keeps guided-diffusion's module structure and state_dict names so official checkpoints load into it, and it is
itself checked against the official fixture (check_against_official() below): if it reproduces adm-tiny's
eps.npy, its structure is the official one for that configuration.

Run with Debian's python3-torch (1.13, CPU):  /usr/bin/python3 tests/generators/adm_reference.py --check
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Norm32(nn.GroupNorm):
    """GroupNorm(32 groups), computed in float32."""

    def __init__(self, channels):
        super().__init__(32, channels)

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def sinusoid(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    out = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        out = torch.cat([out, torch.zeros_like(out[:, :1])], dim=-1)
    return out


class Up(nn.Module):
    def __init__(self, channels, use_conv, out_channels=None):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Down(nn.Module):
    def __init__(self, channels, use_conv, out_channels=None):
        super().__init__()
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(2, 2)

    def forward(self, x):
        return self.op(x)


class Res(nn.Module):
    def __init__(self, channels, emb_channels, out_channels, scale_shift, up=False, down=False):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(Norm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Up(channels, False), Up(channels, False)
        elif down:
            self.h_upd, self.x_upd = Down(channels, False), Down(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if scale_shift else out_channels))
        self.out_layers = nn.Sequential(Norm32(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x, emb):
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.scale_shift:
            scale, shift = torch.chunk(e, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class Attn(nn.Module):
    def __init__(self, channels, num_heads, num_head_channels, new_order):
        super().__init__()
        self.heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.new_order = new_order
        self.norm = Norm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def attend(self, qkv):
        b, width, length = qkv.shape
        ch = width // (3 * self.heads)
        if self.new_order:
            q, k, v = qkv.chunk(3, dim=1)
            q = q.reshape(b * self.heads, ch, length)
            k = k.reshape(b * self.heads, ch, length)
            v = v.reshape(b * self.heads, ch, length)
        else:
            q, k, v = qkv.reshape(b * self.heads, 3 * ch, length).split(ch, dim=1)
        s = 1 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bct,bcs->bts", q * s, k * s)
        w = torch.softmax(w.float(), dim=-1).type(w.dtype)
        return torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, length)

    def forward(self, x, emb=None):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.proj_out(self.attend(self.qkv(self.norm(x))))
        return (x + h).reshape(b, c, *spatial)


class Seq(nn.Sequential):
    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, (Res, Attn)) else layer(x)
        return x


DEFAULT_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}


class UNet(nn.Module):
    def __init__(self, f):
        super().__init__()
        mc = f["num_channels"]
        mult = DEFAULT_MULT[f["image_size"]] if f["channel_mult"] == "" else tuple(int(m) for m in f["channel_mult"].split(","))
        attn = {f["image_size"] // int(r) for r in f["attention_resolutions"].split(",")} if f["attention_resolutions"] else set()
        heads, head_ch = f["num_heads"], f["num_head_channels"]
        heads_up = heads if f["num_heads_upsample"] == -1 else f["num_heads_upsample"]
        ss, updown, new = f["use_scale_shift_norm"], f["resblock_updown"], f["use_new_attention_order"]
        emb = 4 * mc
        self.mc = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        if f["class_cond"]:
            self.label_emb = nn.Embedding(1000, emb)
        ch = first = int(mult[0] * mc)
        self.input_blocks = nn.ModuleList([Seq(nn.Conv2d(3, ch, 3, padding=1))])
        chans, ds = [ch], 1
        for level, m in enumerate(mult):
            for _ in range(f["num_res_blocks"]):
                layers = [Res(ch, emb, int(m * mc), ss)]
                ch = int(m * mc)
                if ds in attn:
                    layers.append(Attn(ch, heads, head_ch, new))
                self.input_blocks.append(Seq(*layers))
                chans.append(ch)
            if level != len(mult) - 1:
                self.input_blocks.append(Seq(Res(ch, emb, ch, ss, down=True) if updown else Down(ch, True, ch)))
                chans.append(ch)
                ds *= 2
        self.middle_block = Seq(Res(ch, emb, ch, ss), Attn(ch, heads, head_ch, new), Res(ch, emb, ch, ss))
        self.output_blocks = nn.ModuleList([])
        for level, m in list(enumerate(mult))[::-1]:
            for i in range(f["num_res_blocks"] + 1):
                layers = [Res(ch + chans.pop(), emb, int(mc * m), ss)]
                ch = int(mc * m)
                if ds in attn:
                    layers.append(Attn(ch, heads_up, head_ch, new))
                if level and i == f["num_res_blocks"]:
                    layers.append(Res(ch, emb, ch, ss, up=True) if updown else Up(ch, True, ch))
                    ds //= 2
                self.output_blocks.append(Seq(*layers))
        self.out = nn.Sequential(Norm32(ch), nn.SiLU(), nn.Conv2d(first, 6 if f["learn_sigma"] else 3, 3, padding=1))

    def forward(self, x, t, y=None):
        emb = self.time_embed(sinusoid(t, self.mc))
        if y is not None:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def randomize(model, generator):
    """The fixture's recipe: weights N(0, 1/fan_in), norm gains 1 + 0.1·N, every other vector 0.1·N."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                fan_in = p[0].numel() if not name.startswith("label_emb") else 1
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(fan_in))
            elif ".norm." in name or "layers.0." in name or name.startswith("out.0."):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator) if name.endswith("weight")
                        else 0.1 * torch.randn(p.shape, generator=generator))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))


def check_against_official(fixture_dir):
    import json
    import numpy as np
    flags = json.load(open(f"{fixture_dir}/flags.json"))
    model = UNet(flags).eval()
    model.load_state_dict(torch.load(f"{fixture_dir}/model.pt", map_location="cpu"), strict=True)
    x0 = torch.from_numpy(np.load(f"{fixture_dir}/x0.npy"))
    t = torch.from_numpy(np.load(f"{fixture_dir}/t.npy"))
    with torch.no_grad():
        eps = model(x0, t).numpy()
    ref = np.load(f"{fixture_dir}/eps.npy")
    err = np.abs(eps - ref).max() / np.abs(ref).max()
    print(f"reference model vs official adm-tiny eps: max|diff|/max|ref| = {err:.2e}")
    assert err < 1e-5, "the reference model does not reproduce the official fixture"


if __name__ == "__main__":
    import os
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    if "--check" in sys.argv:
        check_against_official(os.path.join(here, "..", "fixtures", "adm-tiny"))
