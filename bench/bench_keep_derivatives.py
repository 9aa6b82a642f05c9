"""Where the CPU training forward of taylor_features should keep dh/du: keeping against recomputing.

    python -P bench/bench_keep_derivatives.py                    # d = 32 ... 512
    python -P bench/bench_keep_derivatives.py --dims 64 128 --activation silu
    python -P bench/bench_keep_derivatives.py --capability AVX2   # the AVX2 kernels on an AVX-512 CPU
    python -P bench/bench_keep_derivatives.py --backward-only     # dW from the kept dh/du: kernel vs BLAS

A forward of taylor_features that will be differentiated keeps dh/du (an n x m tensor) from
d = taylornet.functional.KEEP_DERIVATIVES_MIN_DIM; below, the backward recomputes both products.
This times taylor_features forward + backward (dW) both ways, interleaved in one process, and prints
the median milliseconds of each and their ratio per d; and the kept way once more with the backward
on BLAS products (TAYLORNET_SAVED_BACKWARD=blas) in place of the register kernel that computes dW
alone up to d = 256; and once with the kept derivatives written through the caches
(TAYLORNET_SAVED_STORES=cached) instead of streamed past them. With --backward-only, the backward
op alone from one kept forward, kernel against BLAS. Set GLIBC_TUNABLES=glibc.malloc.hugetlb=1 to
compare under huge-page malloc.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import taylornet as tn
import taylornet.functional as functional
from taylornet.ops import cpu_capability


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--m", type=int, default=4096)
    p.add_argument("--dims", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    p.add_argument("--activation", default="tanh")
    p.add_argument("--order", type=int, default=2)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--backward-only", action="store_true",
                   help="time the backward op alone from the kept dh/du, register kernel against BLAS")
    p.add_argument("--capability", default=None,
                   help="the CPU kernels' instruction set: DEFAULT, AVX2 or AVX512 (default: the best this CPU has)")
    args = p.parse_args()
    if args.capability:
        cpu_capability(args.capability)
    if args.backward_only:
        return backward_only(args)
    threshold = functional.KEEP_DERIVATIVES_MIN_DIM
    print(f"n={args.n} m={args.m} {args.activation} order {args.order}, {cpu_capability()}, "
          f"{torch.get_num_threads()} threads, "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}, load average {os.getloadavg()[0]:.1f}; "
          f"the default keeps from d = {threshold}")
    print("| d | keep ms | recompute ms | keep / recompute | keep, BLAS backward ms | keep, cached stores ms |\n"
          "|---|---|---|---|---|---|")
    try:
        for d in args.dims:
            x, w0, w, cot = problem(args, d)

            def call():
                h = tn.taylor_features(x, w0, w, activation=args.activation, order=args.order)
                return torch.autograd.grad(h, [w], cot)

            times = {"keep": [], "recompute": [], "keep-blas": [], "keep-cached": []}
            for _ in range(args.rounds):
                for mode in times:
                    functional.KEEP_DERIVATIVES_MIN_DIM = d + 1 if mode == "recompute" else 0
                    if mode == "keep-blas":
                        os.environ["TAYLORNET_SAVED_BACKWARD"] = "blas"
                    if mode == "keep-cached":
                        os.environ["TAYLORNET_SAVED_STORES"] = "cached"
                    call()
                    t = time.perf_counter()
                    call()
                    times[mode].append(time.perf_counter() - t)
                    os.environ.pop("TAYLORNET_SAVED_BACKWARD", None)
                    os.environ.pop("TAYLORNET_SAVED_STORES", None)
            keep, recompute, blas, cached = (statistics.median(times[k]) * 1e3 for k in times)
            print(f"| {d} | {keep:.1f} | {recompute:.1f} | {keep / recompute:.2f} | {blas:.1f} | {cached:.1f} |",
                  flush=True)
    finally:
        functional.KEEP_DERIVATIVES_MIN_DIM = threshold
        os.environ.pop("TAYLORNET_SAVED_BACKWARD", None)
        os.environ.pop("TAYLORNET_SAVED_STORES", None)
    return 0


def problem(args, d: int):
    """(x, w0, w, cotangent of h) of one d, w away from the expansion point and requiring grad."""
    g = torch.Generator().manual_seed(d)
    x = torch.randn(args.n, d, generator=g)
    w0 = torch.randn(args.m, d, generator=g) / d**0.5
    w = (0.1 * torch.randn(args.m, d, generator=g) / d**0.5).requires_grad_()
    return x, w0, w, torch.randn(args.n, args.m, generator=g)


def backward_only(args) -> int:
    print(f"n={args.n} m={args.m} {args.activation} order {args.order}, {cpu_capability()}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}: the backward op from the "
          "kept dh/du (dW alone)")
    print("| d | kernel ms | BLAS ms | BLAS / kernel |\n|---|---|---|---|")
    threshold = functional.KEEP_DERIVATIVES_MIN_DIM
    try:
        functional.KEEP_DERIVATIVES_MIN_DIM = 0
        for d in args.dims:
            x, w0, w, cot = problem(args, d)
            h = tn.taylor_features(x, w0, w, activation=args.activation, order=args.order)
            times = {"auto": [], "blas": []}
            for _ in range(args.rounds):
                for mode in times:
                    os.environ["TAYLORNET_SAVED_BACKWARD"] = mode
                    torch.autograd.grad(h, [w], cot, retain_graph=True)
                    t = time.perf_counter()
                    torch.autograd.grad(h, [w], cot, retain_graph=True)
                    times[mode].append(time.perf_counter() - t)
            kernel, blas = (statistics.median(times[k]) * 1e3 for k in times)
            print(f"| {d} | {kernel:.2f} | {blas:.2f} | {blas / kernel:.2f} |", flush=True)
    finally:
        functional.KEEP_DERIVATIVES_MIN_DIM = threshold
        os.environ.pop("TAYLORNET_SAVED_BACKWARD", None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
