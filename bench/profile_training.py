"""Where the time of a training step goes: the steps of ``taylornet bench --training`` by operator.

    python -P bench/profile_training.py                      # wide and deep, 3 rounds
    python -P bench/profile_training.py --models wide --top 20 --out profile.json

For each model (wide: TaylorLinear(32, 4096) -> Linear(4096, 10); deep: TaylorLinear(32, 2048) ->
TaylorLinear(2048, 2048) -> Linear(2048, 10); order 2, silu, batch 1024, cross-entropy, Adam) the
step of the drop-in layers and that of the same model on taylornet.reference under torch.compile
(taylornet/bench/training.py builds both) run in one process, in rounds. A round times `--steps`
steps of each without the profiler (wall milliseconds per step), then profiles `--steps` more with
torch.profiler and sums each operator's own CPU time per step, by operator and input shapes, and by
kind: the matrix products (aten mm / addmm / bmm), taylornet's ops, the compiled graphs' own
kernels, the optimizer's elementwise ops, the rest. An operator's time is that of its call on the
calling thread (the work of its other threads runs inside it), so the kinds add up to about the
profiled step. The profiler adds its own cost, unevenly across operators: the speed-up is that of
the unprofiled steps, and the table says where each implementation spends its step.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from taylornet.bench.training import CLASSES, MODELS, build, step_fn

PRODUCTS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm")
OPTIMIZER = ("aten::lerp_", "aten::addcdiv_", "aten::addcmul_", "aten::sqrt", "aten::div", "aten::mul_",
             "aten::add_", "aten::_foreach")


def kind(name: str) -> str:
    if name in PRODUCTS:
        return "matrix products"
    if name.startswith("taylornet::"):
        return "taylornet ops"
    if "CompiledFxGraph" in name:
        return "compiled kernels"
    if name.startswith(OPTIMIZER):
        return "optimizer elementwise"
    return "other"


def wall_ms(step, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def profiled_ms(step, steps: int) -> collections.Counter:
    """Own CPU milliseconds per step, by (operator, input shapes)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    out = collections.Counter()
    for e in prof.key_averages(group_by_input_shape=True):
        out[(e.key, str(e.input_shapes))] += e.self_cpu_time_total / 1e3 / steps
    return out


def profile_model(name: str, batch: int, steps: int, rounds: int) -> dict:
    fused, ref, _ = build(name)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, MODELS[name][0][0], generator=g)
    y = torch.randint(0, CLASSES, (batch,), generator=g)
    calls = {"taylornet": step_fn(fused, x, y, False), "compiled": step_fn(ref, x, y, True)}
    for step in calls.values():
        for _ in range(3):  # compile, warm up
            step()
    walls = {k: [] for k in calls}
    ops = {k: collections.Counter() for k in calls}
    for _ in range(rounds):
        for k, step in calls.items():
            walls[k].append(wall_ms(step, steps))
            ops[k].update(profiled_ms(step, steps))
    out = {}
    for k in calls:
        per_op = {key: v / rounds for key, v in ops[k].items()}
        kinds = collections.Counter()
        for (op, _), v in per_op.items():
            kinds[kind(op)] += v
        out[k] = {"wall_ms": statistics.median(walls[k]), "wall_ms_rounds": walls[k],
                  "profiled_ms": sum(per_op.values()), "kinds_ms": dict(kinds),
                  "ops_ms": sorted(([op, shapes, v] for (op, shapes), v in per_op.items()), key=lambda r: -r[2])}
    out["speedup_vs_compiled"] = out["compiled"]["wall_ms"] / out["taylornet"]["wall_ms"]
    return out


def report(name: str, r: dict, top: int) -> None:
    print(f"== train {name}: taylornet {r['taylornet']['wall_ms']:.1f} ms, compiled {r['compiled']['wall_ms']:.1f} ms "
          f"per step (unprofiled medians): {r['speedup_vs_compiled']:.2f}x")
    for k in ("taylornet", "compiled"):
        s = r[k]
        kinds = ", ".join(f"{kk} {v:.1f}" for kk, v in sorted(s["kinds_ms"].items(), key=lambda kv: -kv[1]))
        print(f"  {k}: profiled step {s['profiled_ms']:.1f} ms = {kinds}")
        for op, shapes, v in s["ops_ms"][:top]:
            print(f"    {v:8.2f} ms  {op:<40.40} {shapes[:90]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["wide", "deep"])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=5, help="steps per timing and per profile (default 5)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--top", type=int, default=12, help="operators listed per implementation (default 12)")
    p.add_argument("--out", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args()
    if args.steps < 1 or args.rounds < 1:
        p.error("--steps and --rounds: expected at least 1")
    results = {}
    for name in args.models:
        torch._dynamo.reset()
        results[name] = profile_model(name, args.batch, args.steps, args.rounds)
        report(name, results[name], args.top)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "batch": args.batch, "models": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
