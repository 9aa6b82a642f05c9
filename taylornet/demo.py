"""Demo: fit a low-rank quadratic target with the sign-randomized quadratic Taylor model and with the
linearized (NTK) model of the same network, and time the fused op against plain autograd.

The target y = (b1.x)^2 - (b2.x)^2 with orthonormal b1, b2 and x uniform on the sphere of radius
sqrt(d) is what the quadratic model learns with few samples (about d of them, against d^2 for the
NTK). Both models start from the same symmetric initialization (f = 0) with the movement W = 0,
train W by full-batch gradient descent, and are evaluated on held-out samples: the quadratic model by
its sign expectation E_S f. The activation must not be odd (tanh is): with no biases an odd
activation makes the network odd in x, and the target is even.
"""
from __future__ import annotations

import argparse

import torch

from . import reference
from .experiments.data import sample_sphere
from .modules import TaylorNet
from .utils.timing import median_time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dim", type=int, default=32, help="input dimension d")
    p.add_argument("--width", type=int, default=2048, help="neurons m")
    p.add_argument("--train", type=int, default=512, help="training samples")
    p.add_argument("--test", type=int, default=2048, help="test samples")
    p.add_argument("--steps", type=int, default=150, help="full-batch gradient steps")
    p.add_argument("--lr", type=float, default=1.0)
    p.add_argument("--activation", default="gelu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def target(x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    p = x @ beta.T
    return p[:, 0] ** 2 - p[:, 1] ** 2


def train(model: TaylorNet, x, y, xt, yt, steps: int, lr: float, label: str) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    report = max(1, steps // 5)
    for step in range(1, steps + 1):
        model.train()
        loss = (model(x).squeeze(-1) - y).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % report == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                test = (model(xt).squeeze(-1) - yt).pow(2).mean().item()
            print(f"  {label:>9}  step {step:4d}  train loss {loss.item():8.4f}  test mse {test:8.4f}")
    return test


def run(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    d, m = args.dim, args.width
    beta = torch.linalg.qr(torch.randn(d, 2, generator=g))[0].T
    x, xt = sample_sphere(args.train, d, g), sample_sphere(args.test, d, g)
    y, yt = target(x, beta), target(xt, beta)
    print(f"taylornet demo: y = (b1.x)^2 - (b2.x)^2, d={d}, m={m}, n={args.train}, "
          f"activation={args.activation}, test target variance {yt.var().item():.3f}")
    results = {}
    for label, order, signs in (("quadratic", 2, True), ("NTK", 1, False)):
        torch.manual_seed(args.seed)
        model = TaylorNet(d, m, activation=args.activation, order=order, sign_randomization=signs)
        results[label] = train(model, x, y, xt, yt, args.steps, args.lr, label)

    # One forward + backward of the quadratic model: fused op vs the pure-autograd reference.
    torch.manual_seed(args.seed)
    model = TaylorNet(d, m, activation=args.activation, order=2)
    with torch.no_grad():
        model.weight.normal_(0, 0.1 / d**0.5)

    def fused():
        model.weight.grad = None
        model(x).sum().backward()

    def eager():
        model.weight.grad = None
        reference.taylor_net(x, model.weight0, model.weight, model.a, activation=args.activation,
                             order=2, scale=model.scale).sum().backward()

    tf, te = median_time(fused, repeats=3), median_time(eager, repeats=3)
    print(f"forward+backward, n={args.train}, m={m}: fused {tf * 1e3:.1f} ms, "
          f"autograd reference {te * 1e3:.1f} ms ({te / tf:.1f}x)")
    better = results["quadratic"] < results["NTK"]
    print(f"test mse: quadratic {results['quadratic']:.4f} vs NTK {results['NTK']:.4f} -> "
          f"{'the quadratic model generalizes better' if better else 'the NTK model did as well or better'}"
          " in this run")
    return 0
