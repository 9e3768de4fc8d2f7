"""ddpm-segmentation's pixel-classifier stage re-created in PyTorch from its description (docs/method.md), to compare
IlgpuDiffSeg's ensemble with the original's way of training on identical inputs: the features and masks written by
`dotnet run --project benchmarks/IlgpuDiffSeg.Benchmarks -c Release -- export-features EXP.json DIR`.

What it reproduces: per-image removal of classes under 20 pixels, ignore-label pixels dropped, the pixel classifier
(Linear→ReLU→BatchNorm1d ×2 → Linear, 128/32 or 256/128 hidden units), N(0, 0.02) Linear init, one seed set once and
members trained one after another each with its own shuffled DataLoader (batch 64, drop_last), Adam 1e-3, mean
cross-entropy, the stopping rule (from epoch 4, stop after 51 minibatches without a new minimum loss), prediction by the
mode of the members' argmax (ties to the smallest class), and dataset-level IoU with absent classes counted as 0.

    /usr/bin/python3 benchmarks/original_mlp.py DIR --classes 5 --ignore 255 [--members 10] [--seed 0]

With --replay TRACE (from `IlgpuDiffSeg.Benchmarks train-trace DIR CLASSES STEPS TRACE`) it instead trains one PyTorch
classifier from IlgpuDiffSeg's initial parameters on the same batches and compares losses and final parameters: the
training step's parity with PyTorch.
"""
import argparse
import glob
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn


class PixelClassifier(nn.Module):
    def __init__(self, classes, dim):
        super().__init__()
        h1, h2 = (128, 32) if classes < 30 else (256, 128)
        self.layers = nn.Sequential(nn.Linear(dim, h1), nn.ReLU(), nn.BatchNorm1d(h1), nn.Linear(h1, h2), nn.ReLU(),
                                    nn.BatchNorm1d(h2), nn.Linear(h2, classes))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.constant_(m.bias, 0.0)

    def forward(self, x):
        return self.layers(x)


def load(folder):
    feats = sorted(glob.glob(os.path.join(folder, "*_features.npy")))
    return [np.load(f) for f in feats], [np.load(f.replace("_features.npy", "_mask.npy")).astype(np.int64) for f in feats]


def train(features, masks, classes, ignore, members, seed, max_epochs):
    dim = features[0].shape[0]
    xs, ys = [], []
    for f, m in zip(features, masks):
        m = m.copy()
        for c in range(classes):
            if c != ignore and 0 < (m == c).sum() < 20:
                m[m == c] = ignore
        xs.append(torch.from_numpy(f.reshape(dim, -1).T.copy()))
        ys.append(torch.from_numpy(m.reshape(-1)))
    x, y = torch.cat(xs), torch.cat(ys)
    keep = y != ignore
    x, y = x[keep], y[keep]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True, drop_last=True)
    models, iterations = [], 0
    for _ in range(members):
        model = PixelClassifier(classes, dim)
        model.train()
        loss_fn = nn.CrossEntropyLoss()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        best, count, stop = 1e7, 0, False
        for epoch in range(max_epochs):
            for xb, yb in loader:
                optimizer.zero_grad()
                loss = loss_fn(model(xb), yb)
                loss.backward()
                optimizer.step()
                iterations += 1
                if epoch > 3:
                    if loss.item() < best:
                        best, count = loss.item(), 0
                    else:
                        count += 1
                    if count > 50:
                        stop = True
                        break
            if stop:
                break
        models.append(model.eval())
    return models, iterations


@torch.no_grad()
def evaluate(models, features, masks, classes, ignore):
    inter = np.zeros(classes)
    union = np.zeros(classes)
    for f, gt in zip(features, masks):
        x = torch.from_numpy(f.reshape(f.shape[0], -1).T.copy())
        votes = torch.stack([m(x).argmax(dim=1) for m in models], dim=1)
        pred = torch.mode(votes, dim=1).values.numpy().reshape(gt.shape)
        for c in range(classes):
            if c == ignore:
                continue
            inter[c] += np.logical_and(pred == c, gt == c).sum()
            union[c] += np.logical_or(pred == c, gt == c).sum()
    ious = [inter[c] / (1e-8 + union[c]) for c in range(classes) if c != ignore]
    return float(np.mean(ious)), ious


def replay(a):
    trf, trm = load(os.path.join(a.dir, "train"))
    dim = trf[0].shape[0]
    x = torch.cat([torch.from_numpy(f.reshape(dim, -1).T.copy()) for f in trf])
    y = torch.cat([torch.from_numpy(m.reshape(-1)) for m in trm])
    initial = np.load(os.path.join(a.replay, "initial.npy"))
    order = torch.from_numpy(np.load(os.path.join(a.replay, "order.npy")))
    model = PixelClassifier(a.classes, dim)
    # IlgpuDiffSeg's packed member layout, in the original's state_dict order.
    offset = 0
    with torch.no_grad():
        for name in ["layers.0.weight", "layers.0.bias", "layers.2.weight", "layers.2.bias", "layers.3.weight", "layers.3.bias",
                     "layers.5.weight", "layers.5.bias", "layers.6.weight", "layers.6.bias"]:
            p = dict(model.named_parameters())[name]
            p.copy_(torch.from_numpy(initial[offset:offset + p.numel()].reshape(p.shape)))
            offset += p.numel()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for s in range(len(order) // 64):
        idx = order[s * 64:(s + 1) * 64]
        opt.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    final = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    ours = np.load(os.path.join(a.replay, "final.npy"))
    ours_losses = np.load(os.path.join(a.replay, "losses.npy"))
    bn = [model.layers[2].running_mean, model.layers[2].running_var, model.layers[5].running_mean, model.layers[5].running_var]
    running = torch.cat([t.reshape(-1) for t in bn]).numpy()
    ours_running = np.load(os.path.join(a.replay, "running.npy"))
    rel = np.abs(final - ours).max() / np.abs(final).max()
    print(f"{len(losses)} steps; final loss torch {losses[-1]:.6f} ours {ours_losses[-1]:.6f}; "
          f"max |loss diff| {np.abs(np.array(losses) - ours_losses).max():.2e}")
    print(f"final parameters: max|diff|/max|torch| = {rel:.2e}; running stats: {np.abs(running - ours_running).max() / np.abs(running).max():.2e}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--ignore", type=int, required=True)
    p.add_argument("--members", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--replay")
    a = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if a.replay:
        replay(a)
        return
    trf, trm = load(os.path.join(a.dir, "train"))
    tef, tem = load(os.path.join(a.dir, "test"))
    start = time.time()
    models, iterations = train(trf, trm, a.classes, a.ignore, a.members, a.seed, a.max_epochs)
    seconds = time.time() - start
    miou, ious = evaluate(models, tef, tem, a.classes, a.ignore)
    print("per-class IoU: " + " ".join(f"{v:.4f}" for v in ious))
    print(f"original recipe: {a.members} members, {iterations} iterations in {seconds:.1f} s (torch {torch.__version__}, CPU)")
    print(f"mIoU: {miou:.6f}")


if __name__ == "__main__":
    main()
