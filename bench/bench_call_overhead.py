"""The fixed cost of one call: the fused ops against the reference on a problem too small to time the math.

    python -P bench/bench_call_overhead.py
    python -P bench/bench_call_overhead.py --n 64 --d 16 --m 256

Times taylor_net and taylor_features (forward without autograd, forward recording the graph, and
forward + backward w.r.t. w) against taylornet.reference under eager autograd, interleaved in one
process, and prints the median microseconds per call. At n = 8, d = 4, m = 16 the kernels take a few
microseconds, so the figures are the cost of argument checks, dispatch and autograd.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import taylornet as tn
import taylornet.reference as ref


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--d", type=int, default=4)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--calls", type=int, default=300, help="calls per timed round")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.d, generator=g)
    w0 = torch.randn(args.m, args.d, generator=g)
    w = (0.1 * torch.randn(args.m, args.d, generator=g)).requires_grad_()
    a = torch.randn(args.m, generator=g)

    def cases(impl):
        def net():
            return impl.taylor_net(x, w0, w, a, order=2)

        def features():
            return impl.taylor_features(x, w0, w, order=2)

        def no_grad(f):
            def call():
                with torch.no_grad():
                    f()
            return call

        def backward(f):
            def call():
                torch.autograd.grad(f().sum(), w)
            return call

        return {"net forward, no grad": no_grad(net), "net forward": net, "net forward+backward": backward(net),
                "features forward+backward": backward(features)}

    impls = {"taylornet": cases(tn), "reference": cases(ref)}
    times = {(impl, case): [] for impl in impls for case in impls[impl]}
    for _ in range(args.rounds):
        for (impl, case), samples in times.items():
            f = impls[impl][case]
            f()
            t = time.perf_counter()
            for _ in range(args.calls):
                f()
            samples.append((time.perf_counter() - t) / args.calls)
    print(f"n={args.n} d={args.d} m={args.m} tanh order 2, float32, {torch.get_num_threads()} threads; "
          f"median of {args.rounds} rounds of {args.calls} calls, microseconds per call")
    print("| call | taylornet | reference | reference / taylornet |\n|---|---|---|---|")
    for case in impls["taylornet"]:
        ours, theirs = (statistics.median(times[(impl, case)]) * 1e6 for impl in impls)
        print(f"| {case} | {ours:.0f} | {theirs:.0f} | {theirs / ours:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
