"""Training steps and thread scaling: ``taylornet bench --training``.

Training steps (cross-entropy, Adam, batch 1024, order 2, silu, float32 on CPU) of two models built
from the drop-in layer, against the same models on ``taylornet.reference`` under torch.compile:

    wide   TaylorLinear(32, 4096) -> Linear(4096, 10)
    deep   TaylorLinear(32, 2048) -> TaylorLinear(2048, 2048) -> Linear(2048, 10)

A step is zero_grad, forward, loss, backward and the optimizer step; both versions hold identical
parameters and see the same batch. The compiled version compiles the model's forward and loss
(fullgraph, static shapes), so its backward is the compiled graph too; Adam runs eagerly in both.
For scale, the same rounds time the plain network of the same shapes (nn.Linear and SiLU, eager):
what a step costs when the first layers are ordinary ones, with the head, loss and optimizer of the
Taylor model's step.

Thread scaling: the fused ops alone (the core case, TaylorNet forward+backward w.r.t. W at n=2048,
d=32, m=16384, and taylor_features forward+backward at n=1024, d=64, m=4096) at 1 and at 2 threads.

Every figure is a median over interleaved rounds in one process (taylornet.utils.timing), with the compute floor
of floor.py measured in the same rounds.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..utils import results, timing
from . import report
from .floor import FloorRate

MODELS = {
    "wide": ((32, 4096),),
    "deep": ((32, 2048), (2048, 2048)),
}
CLASSES = 10


class ReferenceTaylorLinear(nn.Module):
    """TaylorLinear's parameters and buffers with the forward of taylornet.reference."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        from .. import reference

        lay = self.layer
        return reference.taylor_features(x, lay.weight0, lay.weight, lay.bias0, lay.bias,
                                         activation=lay.activation, order=lay.order)


def build(name: str, seed: int = 0):
    """(fused model, reference model with equal parameters, plain network of the same shapes) for one
    of MODELS."""
    import taylornet as tn

    torch.manual_seed(seed)
    layers = [tn.TaylorLinear(i, o, activation="silu", order=2) for i, o in MODELS[name]]
    for lay in layers:  # away from the expansion point, as after some training
        nn.init.normal_(lay.weight, std=0.1 / lay.in_features**0.5)
    head = nn.Linear(MODELS[name][-1][1], CLASSES)
    fused = nn.Sequential(*layers, head)
    twin = [tn.TaylorLinear(i, o, activation="silu", order=2) for i, o in MODELS[name]]
    twin_head = nn.Linear(MODELS[name][-1][1], CLASSES)
    reference = nn.Sequential(*twin, twin_head)
    reference.load_state_dict(fused.state_dict())
    reference = nn.Sequential(*[ReferenceTaylorLinear(t) for t in twin], twin_head)
    plain = nn.Sequential(*[m for i, o in MODELS[name] for m in (nn.Linear(i, o), nn.SiLU())],
                          nn.Linear(MODELS[name][-1][1], CLASSES))
    return fused, reference, plain


def step_fn(model, x, y, compiled: bool):
    """One training step of ``model`` on (x, y) as a zero-argument callable."""
    loss_of = lambda inp, target: nn.functional.cross_entropy(model(inp), target)  # noqa: E731
    if compiled:
        loss_of = torch.compile(loss_of, fullgraph=True, dynamic=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_of(x, y)
        loss.backward()
        opt.step()
        return loss
    return step


def time_interleaved(calls: dict, repeats: int, min_time: float) -> dict:
    for c in calls.values():
        c()
        c()  # compile / warm up
    numbers = {k: timing.calibrate(timing.time_calls(c, 1), min_time) for k, c in calls.items()}
    samples = timing.interleaved(calls, numbers, {k: repeats for k in calls})
    return {k: timing.summarize(v) for k, v in samples.items()}


def training_rows(batch: int, repeats: int, min_time: float) -> list[dict]:
    rows = []
    for name in MODELS:
        torch._dynamo.reset()
        fused, ref, plain = build(name)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(batch, MODELS[name][0][0], generator=g)
        y = torch.randint(0, CLASSES, (batch,), generator=g)
        stats = time_interleaved({"taylornet": step_fn(fused, x, y, False),
                                  "compiled": step_fn(ref, x, y, True),
                                  "plain": step_fn(plain, x, y, False)}, repeats, min_time)
        t, c, p = (stats[k]["median_s"] for k in ("taylornet", "compiled", "plain"))
        rows.append({"workload": f"train {name}", "model": " -> ".join(
            [f"TaylorLinear{io}" for io in MODELS[name]] + [f"Linear({MODELS[name][-1][1]}, {CLASSES})"]),
            "batch": batch, "taylornet_s": t, "compiled_s": c, "speedup_vs_compiled": c / t,
            "plain_network_s": p, "time_vs_plain_network": t / p,
            "iqr_rel": max(stats["taylornet"]["iqr_rel"], stats["compiled"]["iqr_rel"]),
            "load_average_1m": os.getloadavg()[0]})
    return rows


def _op_calls(seed: int = 0):
    """The fused ops of the thread-scaling table: (label, flops, call)."""
    import taylornet as tn

    g = torch.Generator().manual_seed(seed)
    out = []
    for label, (n, d, m), kind in (("net fwd+bwd n=2048 d=32 m=16384", (2048, 32, 16384), "net"),
                                   ("features fwd+bwd n=1024 d=64 m=4096", (1024, 64, 4096), "features")):
        x = torch.randn(n, d, generator=g)
        w0 = torch.randn(m, d, generator=g) / d**0.5
        w = (0.1 * torch.randn(m, d, generator=g) / d**0.5).requires_grad_()
        if kind == "net":
            a = torch.randint(0, 2, (m,), generator=g).float() * 2 - 1
            cot = torch.randn(n, generator=g)
            call = lambda x=x, w0=w0, w=w, a=a, cot=cot: torch.autograd.grad(  # noqa: E731
                tn.taylor_net(x, w0, w, a, activation="tanh", order=2), [w], cot)
            flops = 10 * n * m * d
        else:
            cot = torch.randn(n, m, generator=g)
            call = lambda x=x, w0=w0, w=w, cot=cot: torch.autograd.grad(  # noqa: E731
                tn.taylor_features(x, w0, w, activation="tanh", order=2), [w], cot)
            flops = 6 * n * m * d
        out.append((label, flops, call))
    return out


def scaling_rows(repeats: int, min_time: float, max_threads: int) -> list[dict]:
    rows = []
    ops = _op_calls()
    floor = FloorRate("cpu", "float32")
    base = {}
    for threads in range(1, max_threads + 1):
        torch.set_num_threads(threads)
        calls = {label: call for label, _, call in ops}
        calls["floor"] = floor
        stats = time_interleaved(calls, repeats, min_time)
        rate = floor.rate(stats["floor"]["median_s"])
        for label, flops, _ in ops:
            t = stats[label]["median_s"]
            base.setdefault(label, t)
            rows.append({"workload": label, "threads": threads, "taylornet_s": t,
                         "speedup_vs_1_thread": base[label] / t, "floor_s": flops / rate,
                         "floor_ratio": t * rate / flops, "iqr_rel": stats[label]["iqr_rel"],
                         "load_average_1m": os.getloadavg()[0]})
    return rows


def run(args) -> int:
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    # 15 samples of at least 0.2 s each: with 7 of 0.05 s, the wide step's IQR reached 30 % on a
    # 2-vCPU VM, whose speed changes over seconds.
    repeats = args.repeats or 15
    min_time = args.min_time or 0.2
    env = report.allocator_env()
    print(f"taylornet bench --training: torch {torch.__version__}, {threads} threads, "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset)')}, load average "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    rows = training_rows(1024, repeats, min_time)
    print("  training step (cross-entropy, Adam, batch 1024, order 2, silu)"
          "   taylornet ms  compiled ms  ×compiled  IQR   plain network ms")
    for r in rows:
        print(f"  {r['model']:<65} {r['taylornet_s'] * 1e3:11.1f} {r['compiled_s'] * 1e3:12.1f} "
              f"{r['speedup_vs_compiled']:10.2f} {100 * r['iqr_rel']:4.0f}% {r['plain_network_s'] * 1e3:17.1f}",
              flush=True)
    scaling = scaling_rows(repeats, min_time, threads)
    torch.set_num_threads(threads)
    print("  thread scaling of the fused ops             threads   ms     ×1 thread  ×floor")
    for r in scaling:
        print(f"  {r['workload']:<44} {r['threads']:5d} {r['taylornet_s'] * 1e3:8.1f} "
              f"{r['speedup_vs_1_thread']:9.2f} {r['floor_ratio']:7.2f}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{args.tag or 'training-cpu'}.json"
    doc = {"schema": "taylornet-bench-training/1", "argv": sys.argv, "machine": results.machine_info("cpu"),
           "software": results.software_info(), "allocator": env, "training": rows, "thread_scaling": scaling,
           "load_average_end": list(os.getloadavg()), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    report.write_json(path, doc)
    print(f"wrote {path}")
    return 0
