"""An independent PyTorch/numpy model of guided-diffusion's Gaussian diffusion (training losses and samplers), written
from its description (docs/method.md, training and sampling), used only to generate golden data for the C# training and
sampling code.

Numerics follow the original where they decide the last bits: every schedule and coefficient table is float64 numpy,
a table entry is taken per sample and cast to float32 only then, and all tensor arithmetic is float32 in the order
the original writes its formulas. The diffusion is always the "spaced" one, as
create_gaussian_diffusion builds it: even without respacing the betas are rebuilt from the cumulative products and
the model is called through the timestep map.

check_against_official() proves this file against tests/fixtures/adm-tiny/{train,sample}, made by the original code.

    /usr/bin/python3 tests/generators/diffusion_reference.py      (Debian python3-torch 1.13, CPU: runs the check)
"""
import json
import math
import os

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------------------------
# Schedules and respacing
# ---------------------------------------------------------------------------------------------------------------


def beta_schedule(name, steps):
    """float64 betas of the named schedule (B16)."""
    if name == "linear":
        # Ho et al.'s 1e-4 .. 0.02 over 1000 steps, stretched so other step counts keep the same overall noise.
        k = 1000 / steps
        return np.linspace(k * 0.0001, k * 0.02, steps, dtype=np.float64)
    if name == "cosine":
        def abar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - abar((i + 1) / steps) / abar(i / steps), 0.999) for i in range(steps)])
    raise ValueError(f"unknown noise_schedule {name!r}")


def space_timesteps(steps, spec):
    """The set of original step indices kept by a respacing spec (D6): "ddimN", "a,b,c" or a list of counts."""
    if isinstance(spec, str) and spec.startswith("ddim"):
        want = int(spec[4:])
        for stride in range(1, steps):
            kept = range(0, steps, stride)
            if len(kept) == want:
                return set(kept)
        raise ValueError(f"no integer stride gives {want} of {steps} steps")
    counts = [int(c) for c in spec.split(",")] if isinstance(spec, str) else list(spec)
    base, longer = divmod(steps, len(counts))
    kept, first = [], 0
    for i, count in enumerate(counts):
        size = base + (1 if i < longer else 0)
        if count > size:
            raise ValueError(f"a section of {size} steps cannot hold {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        pos = 0.0
        for _ in range(count):
            kept.append(first + round(pos))  # Python's round: halves go to the even integer
            pos += stride
        first += size
    return set(kept)


# Enumerations, by the names guided-diffusion uses.
EPSILON, START_X = "EPSILON", "START_X"
LEARNED_RANGE, FIXED_LARGE, FIXED_SMALL = "LEARNED_RANGE", "FIXED_LARGE", "FIXED_SMALL"
MSE, RESCALED_MSE, KL, RESCALED_KL = "MSE", "RESCALED_MSE", "KL", "RESCALED_KL"


def _take(table, t, like):
    """Per-sample entry of a float64 table, cast to float32, shaped to broadcast over `like` (N, ...)."""
    v = torch.from_numpy(np.asarray(table, dtype=np.float64))[t].float()
    return v.reshape(-1, *([1] * (like.dim() - 1))).expand(like.shape)


def _batch_mean(x):
    return x.mean(dim=list(range(1, x.dim())))


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _std_normal_cdf_approx(x):
    # The tanh approximation of Phi used by the original (not erf).
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log P(x) in nats of a Gaussian discretised to the 256 bins of [-1, 1] (bin half-width 1/255); the two edge
    bins extend to +-infinity."""
    d = x - means
    inv_std = torch.exp(-log_scales)
    cdf_hi = _std_normal_cdf_approx(inv_std * (d + 1.0 / 255.0))
    cdf_lo = _std_normal_cdf_approx(inv_std * (d - 1.0 / 255.0))
    log_hi = torch.log(cdf_hi.clamp(min=1e-12))
    log_one_minus_lo = torch.log((1.0 - cdf_lo).clamp(min=1e-12))
    log_bin = torch.log((cdf_hi - cdf_lo).clamp(min=1e-12))
    return torch.where(x < -0.999, log_hi, torch.where(x > 0.999, log_one_minus_lo, log_bin))


class Diffusion:
    """guided-diffusion's SpacedDiffusion (a GaussianDiffusion over the kept steps, the model called on mapped t)."""

    def __init__(self, base_betas, kept, mean_type, var_type, loss_type, rescale_timesteps):
        self.mean_type, self.var_type, self.loss_type = mean_type, var_type, loss_type
        self.rescale_timesteps = rescale_timesteps
        self.original_steps = len(base_betas)
        # Rebuild the betas over the kept steps from the cumulative products (done even when every step is kept;
        # 1 - abar_i/abar_{i-1} is not bit-equal to beta_i in float64).
        base_abar = np.cumprod(1.0 - np.asarray(base_betas, dtype=np.float64))
        betas, prev, self.timestep_map = [], 1.0, []
        for i, a in enumerate(base_abar):
            if i in kept:
                betas.append(1 - a / prev)
                prev = a
                self.timestep_map.append(i)
        b = np.array(betas, dtype=np.float64)
        assert (b > 0).all() and (b <= 1).all()
        self.betas = b
        self.num_timesteps = len(b)
        abar = np.cumprod(1.0 - b)
        abar_prev = np.append(1.0, abar[:-1])
        self.alphas_cumprod, self.alphas_cumprod_prev = abar, abar_prev
        self.sqrt_alphas_cumprod = np.sqrt(abar)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - abar)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / abar)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / abar - 1)
        self.posterior_variance = b * (1.0 - abar_prev) / (1.0 - abar)
        # The posterior variance is 0 at t = 0; its log takes the t = 1 value there.
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = b * np.sqrt(abar_prev) / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * np.sqrt(1.0 - b) / (1.0 - abar)
        self.log_betas = np.log(b)
        large = np.append(self.posterior_variance[1], b[1:])
        self.fixed_large_variance, self.fixed_large_log_variance = large, np.log(large)

    @staticmethod
    def from_flags(flags, timestep_respacing=None):
        """What create_gaussian_diffusion builds from guided-diffusion's flags (D2's loss-type mapping)."""
        steps = flags.get("diffusion_steps", 1000)
        spec = flags.get("timestep_respacing", "") if timestep_respacing is None else timestep_respacing
        kept = space_timesteps(steps, spec if spec else [steps])
        loss = RESCALED_KL if flags.get("use_kl", False) else RESCALED_MSE if flags.get("rescale_learned_sigmas", False) else MSE
        var = LEARNED_RANGE if flags.get("learn_sigma", False) else FIXED_SMALL if flags.get("sigma_small", False) else FIXED_LARGE
        mean = START_X if flags.get("predict_xstart", False) else EPSILON
        return Diffusion(beta_schedule(flags.get("noise_schedule", "linear"), steps), kept, mean, var, loss,
                         flags.get("rescale_timesteps", False))

    # -- the model call --------------------------------------------------------------------------------------------
    def call_model(self, model, x, t, y=None):
        """The model on the original step of spaced index t, as float t·1000/T_original when rescale_timesteps."""
        mapped = torch.tensor(self.timestep_map, dtype=t.dtype)[t]
        if self.rescale_timesteps:
            mapped = mapped.float() * (1000.0 / self.original_steps)
        return model(x, mapped) if y is None else model(x, mapped, y)

    # -- forward process and posterior ------------------------------------------------------------------------------
    def q_sample(self, x0, t, noise):
        return _take(self.sqrt_alphas_cumprod, t, x0) * x0 + _take(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior_mean_variance(self, x0, xt, t):
        mean = _take(self.posterior_mean_coef1, t, xt) * x0 + _take(self.posterior_mean_coef2, t, xt) * xt
        return mean, _take(self.posterior_variance, t, xt), _take(self.posterior_log_variance_clipped, t, xt)

    def predict_xstart_from_eps(self, xt, t, eps):
        return _take(self.sqrt_recip_alphas_cumprod, t, xt) * xt - _take(self.sqrt_recipm1_alphas_cumprod, t, xt) * eps

    def predict_eps_from_xstart(self, xt, t, x0):
        return (_take(self.sqrt_recip_alphas_cumprod, t, xt) * xt - x0) / _take(self.sqrt_recipm1_alphas_cumprod, t, xt)

    # -- the model's distribution p(x_{t-1} | x_t) ------------------------------------------------------------------
    def p_mean_variance_from_output(self, out, x, t, clip_denoised):
        """mean, variance, log variance and predicted x0 from a raw model output (D1)."""
        c = x.shape[1]
        if self.var_type == LEARNED_RANGE:
            assert out.shape[1] == 2 * c
            out, v = out[:, :c], out[:, c:]
            lo = _take(self.posterior_log_variance_clipped, t, x)
            hi = _take(self.log_betas, t, x)
            frac = (v + 1) / 2  # v = -1 gives the posterior variance, v = 1 gives beta
            log_var = frac * hi + (1 - frac) * lo
            var = torch.exp(log_var)
        elif self.var_type == FIXED_LARGE:
            var = _take(self.fixed_large_variance, t, x)
            log_var = _take(self.fixed_large_log_variance, t, x)
        else:
            var = _take(self.posterior_variance, t, x)
            log_var = _take(self.posterior_log_variance_clipped, t, x)
        x0 = out if self.mean_type == START_X else self.predict_xstart_from_eps(x, t, out)
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(x0, x, t)
        return dict(mean=mean, variance=var, log_variance=log_var, pred_xstart=x0)

    def p_mean_variance(self, model, x, t, clip_denoised=True, y=None):
        return self.p_mean_variance_from_output(self.call_model(model, x, t, y), x, t, clip_denoised)

    # -- losses ----------------------------------------------------------------------------------------------------
    def vb_terms_bpd(self, out, x0, xt, t):
        """Per-sample VLB term in bits from a model output: KL(q || p) for t > 0, decoder NLL at t = 0."""
        q_mean, _, q_log_var = self.q_posterior_mean_variance(x0, xt, t)
        p = self.p_mean_variance_from_output(out, xt, t, clip_denoised=False)
        kl = _batch_mean(normal_kl(q_mean, q_log_var, p["mean"], p["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])
        nll = _batch_mean(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model, x0, t, noise, y=None):
        """Per-sample terms (D2): dict with "loss" and, for the MSE types, "mse" and (learn_sigma) "vb"."""
        xt = self.q_sample(x0, t, noise)
        out = self.call_model(model, xt, t, y)
        terms = {}
        if self.loss_type in (KL, RESCALED_KL):
            terms["loss"] = self.vb_terms_bpd(out, x0, xt, t)
            if self.loss_type == RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms
        c = x0.shape[1]
        if self.var_type == LEARNED_RANGE:
            eps_or_x0, v = out[:, :c], out[:, c:]
            # The vb term trains only the variance channels: the mean half enters it detached.
            terms["vb"] = self.vb_terms_bpd(torch.cat([eps_or_x0.detach(), v], dim=1), x0, xt, t)
            if self.loss_type == RESCALED_MSE:
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
            out = eps_or_x0
        target = x0 if self.mean_type == START_X else noise
        terms["mse"] = _batch_mean((target - out) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    # -- samplers with recorded noise -------------------------------------------------------------------------------
    def p_sample_loop(self, model, noise_stack, clip_denoised=True, y=None):
        """Ancestral sampling; noise_stack[0] is x_T, noise_stack[k+1] the draw of step k (unused at t = 0)."""
        assert noise_stack.shape[0] == self.num_timesteps + 1
        x = noise_stack[0]
        with torch.no_grad():
            for k, i in enumerate(reversed(range(self.num_timesteps))):
                t = torch.full((x.shape[0],), i, dtype=torch.int64)
                p = self.p_mean_variance(model, x, t, clip_denoised, y)
                z = noise_stack[k + 1]
                keep = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
                x = p["mean"] + keep * torch.exp(0.5 * p["log_variance"]) * z
        return x

    def ddim_sample_loop(self, model, noise_stack, clip_denoised=True, eta=0.0, y=None):
        """DDIM sampling (D6) with the same noise-stack convention as p_sample_loop."""
        assert noise_stack.shape[0] == self.num_timesteps + 1
        x = noise_stack[0]
        with torch.no_grad():
            for k, i in enumerate(reversed(range(self.num_timesteps))):
                t = torch.full((x.shape[0],), i, dtype=torch.int64)
                p = self.p_mean_variance(model, x, t, clip_denoised, y)
                eps = self.predict_eps_from_xstart(x, t, p["pred_xstart"])
                a = _take(self.alphas_cumprod, t, x)
                a_prev = _take(self.alphas_cumprod_prev, t, x)
                sigma = eta * torch.sqrt((1 - a_prev) / (1 - a)) * torch.sqrt(1 - a / a_prev)
                z = noise_stack[k + 1]
                direction = p["pred_xstart"] * torch.sqrt(a_prev) + torch.sqrt(1 - a_prev - sigma ** 2) * eps
                keep = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
                x = direction + keep * sigma * z
        return x


# ---------------------------------------------------------------------------------------------------------------
# Running a fixture folder (shared by the check and the generator)
# ---------------------------------------------------------------------------------------------------------------


def train_step(model, diffusion, x0, t, noise, y=None):
    """Per-sample terms and d mean(loss)/d parameter, the model in train mode (every Dropout of the reference is p = 0)."""
    model.train()
    model.zero_grad(set_to_none=True)
    terms = diffusion.training_losses(model, x0, t, noise, y)
    terms["loss"].mean().backward()
    grads = {}
    params = dict(model.named_parameters())
    for name in model.state_dict():
        g = params[name].grad
        grads[name] = (torch.zeros_like(params[name]) if g is None else g).detach().numpy().copy()
    return {k: v.detach() for k, v in terms.items()}, grads


def run_sampler(model, flags, run, noise_stack, y=None):
    model.eval()
    d = Diffusion.from_flags(flags, run["timestep_respacing"])
    if run["use_ddim"]:
        return d.ddim_sample_loop(model, noise_stack, run["clip_denoised"], run.get("eta", 0.0), y)
    return d.p_sample_loop(model, noise_stack, run["clip_denoised"], y)


def rel_err(a, ref):
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    scale = np.abs(ref).max()
    return float(np.abs(a - ref).max() / (scale if scale > 0 else 1.0))


def compare_train(model, flags, folder, y=None):
    """Errors of this reference against a train folder: per loss term relative, per gradient tensor max-relative."""
    x0 = torch.from_numpy(np.load(os.path.join(folder, "x_start.npy")))
    t = torch.from_numpy(np.load(os.path.join(folder, "t.npy")))
    noise = torch.from_numpy(np.load(os.path.join(folder, "noise.npy")))
    terms, grads = train_step(model, Diffusion.from_flags(flags), x0, t, noise, y)
    want = json.load(open(os.path.join(folder, "loss.json")))
    loss_err = {k: abs(float(terms[k].mean()) - want[k]) / abs(want[k]) for k in want if k in terms}
    ref = np.load(os.path.join(folder, "grads.npz"))
    assert set(ref.files) == set(grads), "gradient keys differ"
    grad_err = {k: rel_err(grads[k], ref[k]) for k in ref.files}
    return loss_err, grad_err


def compare_sample(model, flags, folder, y=None):
    runs = json.load(open(os.path.join(folder, "sample.json")))
    errs = {}
    for name, run in runs.items():
        if not isinstance(run, dict):
            continue
        stack = torch.from_numpy(np.load(os.path.join(folder, run["noise"])))
        out = run_sampler(model, flags, run, stack, y)
        errs[name] = rel_err(out.numpy(), np.load(os.path.join(folder, f"{name}_out.npy")))
    return errs


def check_against_official(adm_tiny, verbose=True):
    """Reproduces adm-tiny/train (loss terms <= 1e-6 relative, every gradient tensor within 1e-5 of its max abs) and
    adm-tiny/sample (each run within 1e-5 of its max abs). Raises AssertionError if not; returns the numbers."""
    from adm_reference import UNet
    flags = json.load(open(os.path.join(adm_tiny, "flags.json")))
    model = UNet(flags)
    model.load_state_dict(torch.load(os.path.join(adm_tiny, "model.pt"), map_location="cpu"), strict=True)
    loss_err, grad_err = compare_train(model, flags, os.path.join(adm_tiny, "train"))
    sample_err = compare_sample(model, flags, os.path.join(adm_tiny, "sample"))
    worst = max(grad_err, key=grad_err.get)
    if verbose:
        print("official adm-tiny/train: loss terms rel. err " + ", ".join(f"{k} {v:.1e}" for k, v in loss_err.items()))
        print(f"official adm-tiny/train: {len(grad_err)} gradient tensors, worst max|diff|/max|ref| = "
              f"{grad_err[worst]:.1e} ({worst}), median {np.median(list(grad_err.values())):.1e}")
        print("official adm-tiny/sample: max|diff|/max|ref| " + ", ".join(f"{k} {v:.1e}" for k, v in sample_err.items()))
    assert all(v <= 1e-6 for v in loss_err.values()), f"loss terms disagree with the official fixture: {loss_err}"
    assert grad_err[worst] <= 1e-5, f"gradient {worst} disagrees with the official fixture: {grad_err[worst]:.2e}"
    assert all(v <= 1e-5 for v in sample_err.values()), f"samplers disagree with the official fixture: {sample_err}"
    return loss_err, grad_err, sample_err


HERE = os.path.dirname(os.path.abspath(__file__))
ADM_TINY = os.path.join(HERE, "..", "fixtures", "adm-tiny")

if __name__ == "__main__":
    torch.set_num_threads(1)
    check_against_official(ADM_TINY)
