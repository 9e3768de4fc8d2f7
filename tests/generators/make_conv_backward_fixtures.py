"""Generates tests/fixtures/conv-backward/<case>/*.npy: PyTorch autograd's gradients of F.conv2d, the golden data of
Conv2d's backward references (Conv2dBackwardTests).

Each case draws x, w, b and the output gradient g as float32 uniform(-1, 1) values, computes y = conv2d(x, w, b,
stride, padding = k // 2) in float64 and y.backward(g), and writes x, w, g and the gradients dx, dw, db rounded to
float32. Cases: stride 2 with odd sizes (k = 3 and 1), stride 1 with k = 3.

    /usr/bin/python3 tests/generators/make_conv_backward_fixtures.py        (Debian python3-torch 1.13, CPU; seconds)
"""
import os

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "conv-backward")

# name: (n, cin, h, w, cout, k, stride)
CASES = {
    "stride2-k3": (2, 3, 7, 9, 5, 3, 2),
    "stride1-k3": (2, 4, 8, 6, 3, 3, 1),
    "stride2-k1": (1, 3, 9, 7, 4, 1, 2),
}


def uniform(*shape):
    return (torch.rand(*shape, dtype=torch.float64) * 2 - 1).float().double()


def main():
    torch.manual_seed(0)
    for name, (n, cin, h, w, cout, k, stride) in CASES.items():
        x = uniform(n, cin, h, w).requires_grad_()
        wt = uniform(cout, cin, k, k).requires_grad_()
        b = uniform(cout).requires_grad_()
        y = F.conv2d(x, wt, b, stride=stride, padding=k // 2)
        g = uniform(*y.shape)
        y.backward(g)
        folder = os.path.join(OUT, name)
        os.makedirs(folder, exist_ok=True)
        for key, value in (("x", x), ("w", wt), ("g", g), ("dx", x.grad), ("dw", wt.grad), ("db", b.grad)):
            np.save(os.path.join(folder, key + ".npy"), value.detach().numpy().astype(np.float32))
        print(name, tuple(y.shape))


if __name__ == "__main__":
    main()
