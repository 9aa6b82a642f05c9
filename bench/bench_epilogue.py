"""The CPU Taylor epilogue per activation: the specialised epilogue against the plan's tables.

    python -P bench/bench_epilogue.py                                  # n=1024 d=32 m=4096, order 2
    python -P bench/bench_epilogue.py --activations gelu --d 64 --m 16384
    python -P bench/bench_epilogue.py --capability AVX2 --threads 1

Times taylor_features forward (without autograd) and forward + backward w.r.t. w for each
activation, with the epilogue specialised at compile time for the call's series (the default) and
with the plan-driven generic one (TAYLORNET_CPU_EPILOGUE=generic), interleaved in one process, and
prints the median milliseconds. At small d the products are cheap and the difference between
activations is the cost of their epilogues: the transcendental functions (tanh, the sigmoid of
silu, gelu's erfc and exp) and the polynomials of the Taylor terms.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import taylornet as tn
from taylornet.ops import cpu_capability

MODES = ("forward", "forward generic", "fwd+bwd", "fwd+bwd generic")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--d", type=int, default=32)
    p.add_argument("--m", type=int, default=4096)
    p.add_argument("--order", type=int, default=2)
    p.add_argument("--activations", nargs="+", default=["tanh", "silu", "gelu"])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--capability", default=None,
                   help="the CPU kernels' instruction set: DEFAULT, AVX2 or AVX512 (default: the best this CPU has)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.capability:
        cpu_capability(args.capability)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, args.d, generator=g)
    w0 = torch.randn(args.m, args.d, generator=g) / args.d**0.5
    w = (0.1 * torch.randn(args.m, args.d, generator=g) / args.d**0.5).requires_grad_()
    cot = torch.randn(args.n, args.m, generator=g)
    print(f"n={args.n} d={args.d} m={args.m} order {args.order}, {cpu_capability()}, {torch.get_num_threads()} "
          f"threads, load average {os.getloadavg()[0]:.1f}; median ms of {args.rounds} interleaved rounds")
    print("| activation | " + " | ".join(f"{mode} ms" for mode in MODES) + " |")
    print("|" + "---|" * (len(MODES) + 1))
    try:
        for act in args.activations:
            def forward():
                with torch.no_grad():
                    return tn.taylor_features(x, w0, w, activation=act, order=args.order)

            def forward_backward():
                h = tn.taylor_features(x, w0, w, activation=act, order=args.order)
                return torch.autograd.grad(h, [w], cot)

            times = {mode: [] for mode in MODES}
            for _ in range(args.rounds):
                for mode in MODES:
                    os.environ["TAYLORNET_CPU_EPILOGUE"] = "generic" if mode.endswith("generic") else "auto"
                    call = forward if mode.startswith("forward") else forward_backward
                    call()
                    t = time.perf_counter()
                    call()
                    times[mode].append(time.perf_counter() - t)
            print(f"| {act} | " + " | ".join(f"{statistics.median(times[m]) * 1e3:.2f}" for m in MODES) + " |",
                  flush=True)
    finally:
        os.environ.pop("TAYLORNET_CPU_EPILOGUE", None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
