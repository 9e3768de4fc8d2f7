"""Generates tests/fixtures/adamw: three steps of torch.optim.AdamW and guided-diffusion's update_ema on one parameter
tensor, as TrainLoop and MixedPrecisionTrainer run them, for the bit-exact test of kernels/Training/AdamW.cs and Ema.cs.

Before writing, it checks that PyTorch's results equal the formula AdamW.cs and Ema.cs transcribe, bit for bit, and
prints how many values a formula without the fused multiply-adds would get wrong (the reason the kernels fuse them):

    p <- p*f32(1-lr*wd);  m <- fma(g, f32(1-b1), m*f32(b1));  v <- fma(f32(1-b2)*g, g, v*f32(b2))
    p <- p + (f32(-lr/(1-b1^t))*m) / (sqrt(v)/f32(sqrt(1-b2^t)) + f32(eps));   ema <- fma(p, f32(1-rate), ema*f32(rate))

    /usr/bin/python3 tests/generators/make_adamw_fixture.py        (Debian python3-torch 1.13, CPU; a second)
"""
import json
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "adamw")
N = 515  # odd: the host path's vector lanes and scalar tail both run
LR, WD, BETAS, EPS = [1e-4, 5e-5, 1e-4], 0.05, (0.9, 0.999), 1e-8
LG = [None, 20.0, 20.003]  # fp16 loss scale per step (None: fp32, no scaling); 2**-20.003 is not a power of two
RATES = [0.9999, 0.99]
F32 = np.float32


def fma(a, b, c):
    """fp32 fused multiply-add: the product of two floats is exact in double, then one rounding (to double, then to
    float: a double rounding that cannot matter for these values, checked below by the bit comparison itself)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(F32)


def gradients(rng):
    g = (rng.standard_normal((3, N)) * 1e-2).astype(F32)
    g[:, :5] = 0                      # untouched moments
    g[:, 5:10] = 1e-30                # squares below fp32's normal range
    g[:, 10:15] = 3e4                 # large
    for t, lg in enumerate(LG):
        if lg is not None:
            g[t] = (g[t].astype(np.float64) * 2 ** lg).astype(F32)   # the loss was scaled by 2**lg
    return g


def main():
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(N).astype(F32)
    grads = gradients(rng)
    param = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.AdamW([param], lr=LR[0], betas=BETAS, eps=EPS, weight_decay=WD)
    emas = [torch.from_numpy(p0.copy()) for _ in RATES]
    out = {k: [] for k in ("p", "m", "v", "ema")}
    scales = []
    # The formula, in numpy.
    P, M, V, E = p0.copy(), np.zeros(N, F32), np.zeros(N, F32), [p0.copy() for _ in RATES]
    unfused_wrong = 0
    for t in range(1, 4):
        for group in opt.param_groups:
            group["lr"] = LR[t - 1]   # TrainLoop._anneal_lr sets param_group["lr"]
        grad = torch.from_numpy(grads[t - 1].copy())
        lg = LG[t - 1]
        scale = 1.0 if lg is None else 1.0 / (2 ** lg)
        grad.mul_(scale)              # MixedPrecisionTrainer.optimize: grad.mul_(1.0 / (2 ** lg_loss_scale))
        scales.append(float(F32(scale)))
        param.grad = grad
        opt.step()
        state = opt.state[param]
        with torch.no_grad():
            for ema, rate in zip(emas, RATES):
                ema.mul_(rate).add_(param.detach(), alpha=1 - rate)   # guided-diffusion nn.update_ema
        out["p"].append(param.detach().numpy().copy())
        out["m"].append(state["exp_avg"].numpy().copy())
        out["v"].append(state["exp_avg_sq"].numpy().copy())
        out["ema"].append(np.stack([e.numpy().copy() for e in emas]))

        g = grads[t - 1] * F32(scale)
        lr, (b1, b2) = LR[t - 1], BETAS
        step, corr = F32(-(lr / (1 - b1 ** t))), F32(np.sqrt(1 - b2 ** t))
        decayed = P * F32(1 - lr * WD)
        Mu = M * F32(b1) + F32(1 - b1) * g
        M = fma(g, F32(1 - b1), M * F32(b1))
        V = fma(F32(1 - b2) * g, g, V * F32(b2))
        P = decayed + (step * M) / (np.sqrt(V) / corr + F32(EPS))
        E = [fma(P, F32(1 - rate), e * F32(rate)) for e, rate in zip(E, RATES)]
        unfused_wrong += int((Mu != M).sum())
        for name, mine, theirs in (("p", P, out["p"][-1]), ("m", M, out["m"][-1]), ("v", V, out["v"][-1]),
                                   ("ema", np.stack(E), out["ema"][-1])):
            bad = int((mine.view(np.uint32) != theirs.view(np.uint32)).sum())
            if bad:
                raise SystemExit(f"step {t}: {bad} values of {name} differ from the formula; nothing written")
    print(f"torch {torch.__version__}: 3 steps of {N} parameters equal the formula bit for bit "
          f"(an unfused m update would differ in {unfused_wrong} of {3 * N} values)")
    os.makedirs(OUT, exist_ok=True)
    np.save(os.path.join(OUT, "p0.npy"), p0)
    np.save(os.path.join(OUT, "grads.npy"), grads)
    for name, values in out.items():
        np.save(os.path.join(OUT, f"{name}.npy"), np.stack(values))
    meta = {"lr": LR, "weight_decay": WD, "betas": list(BETAS), "eps": EPS, "grad_scale": scales, "ema_rates": RATES,
            "torch": torch.__version__}
    with open(os.path.join(OUT, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
