"""The CUDA mainloops side by side on one case, in one process: time and agreement of each.

    python -P bench/bench_mainloops.py --out mainloops.json
    python -P bench/bench_mainloops.py --d 32 --m 65536 --mainloops mma simt
    python -P bench/bench_mainloops.py --op features --m 65536 --mainloops simt wgmma wgmma+pingpong mma

For each name of TAYLORNET_CUDA_MAINLOOP (the library reads it on every call), taylor_net forward +
backward w.r.t. W (n=16384, d=128, m=2^18, order 2, tanh, bfloat16 by default: the target case of
docs/cuda.md) is timed with CUDA events, and its output and dW are compared with those of the SIMT
mainloop (float32 arithmetic on bf16 inputs), so a mainloop that is fast but wrong shows at once. The
rate is 10nmd FLOPs per step (two products forward, both again and the dW product backward) against
an 8192^3 torch.mm in the same dtype, measured in the same run. `--op features` times the
taylor_features forward instead (4nmd FLOPs, an n x m output: take a smaller m). A name with
"+cp.async" runs that mainloop with TAYLORNET_CUDA_TMA=0 (the wgmma kernels staging with cp.async
instead of the copy engine), one with "+serial" with TAYLORNET_CUDA_OVERLAP=0 (the wgmma reductions
running each tile's products after the previous tile's epilogue rather than under it), one with
"+pingpong" with TAYLORNET_CUDA_PINGPONG=1 (the warp-specialised features forward). A name the
library does not know, or
a mainloop that cannot run this case here, is recorded as such. The JSON is rewritten after every
mainloop, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

import torch

import taylornet as tn

ENV = "TAYLORNET_CUDA_MAINLOOP"
TMA_ENV = "TAYLORNET_CUDA_TMA"
OVERLAP_ENV = "TAYLORNET_CUDA_OVERLAP"
PINGPONG_ENV = "TAYLORNET_CUDA_PINGPONG"
# a name's suffix: that switch away from its default (the defaults: tensor copies, overlap, no ping-pong)
SWITCHES = {"+cp.async": (TMA_ENV, "0"), "+serial": (OVERLAP_ENV, "0"), "+pingpong": (PINGPONG_ENV, "1")}
DEFAULTS = {TMA_ENV: "1", OVERLAP_ENV: "1", PINGPONG_ENV: "0"}


def mainloop_env(name: str) -> tuple[str, dict[str, str]]:
    """The mainloop a name runs and the switches it sets: "wgmma+serial" is wgmma, overlap off."""
    env = dict(DEFAULTS)
    for suffix, (var, value) in SWITCHES.items():
        if suffix in name:
            name = name.replace(suffix, "")
            env[var] = value
    return name, env


def event_times(fn, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after one warm-up, by CUDA events."""
    fn()
    out = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / 1e3)
    return out


def matmul_rate(dtype: torch.dtype, size: int = 8192, repeats: int = 5) -> float:
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    c = torch.empty_like(a)
    return 2 * size**3 / statistics.median(event_times(lambda: torch.mm(a, b, out=c), repeats))


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--m", type=int, default=2**18)
    p.add_argument("--order", type=int, default=2)
    p.add_argument("--activation", default="tanh")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--op", default="net_fb", choices=["net_fb", "features"])
    p.add_argument("--mainloops", nargs="+", default=["simt", "auto", "wgmma", "mma", "wmma"],
                   help="SIMT first: the others are compared with it; NAME+cp.async: with TAYLORNET_CUDA_TMA=0, "
                        "NAME+serial: with TAYLORNET_CUDA_OVERLAP=0, NAME+pingpong: with TAYLORNET_CUDA_PINGPONG=1")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="mainloops.json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_mainloops: needs a CUDA device")

    dtype = getattr(torch, args.dtype)
    n, d, m = args.n, args.d, args.m
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, d, device="cuda", dtype=dtype, generator=g)
    w0 = (torch.randn(m, d, device="cuda", generator=g) / d**0.5).to(dtype)
    w = (0.1 * torch.randn(m, d, device="cuda", generator=g) / d**0.5).to(dtype).requires_grad_()
    a = (torch.randint(0, 2, (m,), device="cuda", generator=g) * 2 - 1).to(dtype)
    cot = torch.randn(n, device="cuda", dtype=dtype, generator=g)

    def step():
        if args.op == "features":
            with torch.no_grad():
                return tn.taylor_features(x, w0, w, activation=args.activation, order=args.order), None
        out = tn.taylor_net(x, w0, w, a, activation=args.activation, order=args.order)
        return out, torch.autograd.grad(out, [w], cot)[0]

    flops = (4 if args.op == "features" else 10) * n * m * d
    report = {"case": {"op": args.op, "n": n, "d": d, "m": m, "order": args.order, "activation": args.activation,
                       "dtype": args.dtype, "flops_per_step": flops},
              "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "matmul_8192_flops_per_s": matmul_rate(dtype), "mainloops": {}}
    print(f"{report['gpu']}: 8192^3 {args.dtype} mm {report['matmul_8192_flops_per_s'] / 1e12:.0f} TFLOP/s; "
          f"n={n} d={d} m={m} order {args.order} {args.activation}")
    reference = None
    previous = {v: os.environ.get(v) for v in (ENV, *DEFAULTS)}
    try:
        for name in args.mainloops:
            mainloop, switches = mainloop_env(name)
            os.environ[ENV] = mainloop
            os.environ.update(switches)
            row: dict = {}
            try:
                out, dw = step()
                torch.cuda.synchronize()
            except (ValueError, RuntimeError) as exc:  # unknown name, or refused for this case
                row = {"status": "unavailable", "error": str(exc).splitlines()[0]}
            else:
                if reference is None:
                    reference = (out, dw)
                secs = statistics.median(event_times(step, args.repeats))
                row = {"status": "ok", "median_s": secs, "flops_per_s": flops / secs,
                       "share_of_matmul": flops / secs / report["matmul_8192_flops_per_s"],
                       "out_rel_err_vs_first": rel_err(out, reference[0]),
                       "dw_rel_err_vs_first": rel_err(dw, reference[1]) if dw is not None else None}
            report["mainloops"][name] = row
            if row["status"] == "ok":
                dw_err = "" if dw is None else f", dW {row['dw_rel_err_vs_first']:.1e}"
                print(f"  {name:6s} {row['median_s'] * 1e3:9.2f} ms  {row['flops_per_s'] / 1e12:7.1f} TFLOP/s  "
                      f"{100 * row['share_of_matmul']:5.1f}% of mm   rel. err. vs {args.mainloops[0]}: "
                      f"out {row['out_rel_err_vs_first']:.1e}{dw_err}", flush=True)
            else:
                print(f"  {name:6s} unavailable: {row['error']}", flush=True)
            with open(args.out, "w") as f:
                json.dump(report, f, indent=2)
    finally:
        for var, value in previous.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
