"""``taylornet bench``: time the fused ops against the autograd reference, eager and compiled.

    taylornet bench --quick                   every op on a small grid (a 2-core CPU: < 3 minutes)
    taylornet bench --preset core             TaylorNet fwd+bwd, n=2048 d=32 m=16384 K=2 tanh, on CPU
    taylornet bench --device cuda             the GPU grid (float32 and bf16)
    taylornet bench --preset cuda-target      n=16384 d=128 m=262144 on CUDA, with a width sweep
    taylornet bench --preset cuda-target --dtypes float32 --tf32    the same with TF32 matmuls
    taylornet bench --ops net_fb --dims 32 --widths 4096 16384 --orders 2 exact

Results go to --out (default out/bench/) as TAG.json, TAG.csv and TAG_*.png; Ctrl-C stops after
writing what has been measured so far.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .cases import CEILING, GRAD_TARGETS, IMPLS, OPS, PRESETS, base_settings, grid, normalize, parse_width


def _csv_list(text: str) -> list[str]:
    return [t for t in text.replace(",", " ").split() if t]


class _ListAction(argparse.Action):
    """Accepts `--x a b`, `--x a,b` and repeated `--x a --x b`."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = []
        for v in values if isinstance(values, list) else [values]:
            items += _csv_list(v)
        setattr(namespace, self.dest, items)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    g = p.add_argument_group("what to run")
    g.add_argument("--quick", action="store_true", help="a small grid of every op (2-core CPU: under 3 minutes)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="a named configuration (options given override it)")
    g.add_argument("--training", action="store_true",
                   help="instead of the op grid: training steps of TaylorLinear models against the reference "
                        "under torch.compile, and the fused ops' thread scaling (bench/training.py)")
    g.add_argument("--device", choices=["cpu", "cuda"], help="default: cpu (the preset's device for presets)")
    g.add_argument("--ops", nargs="+", action=_ListAction, metavar="OP",
                   help=f"of {', '.join(OPS)} (default: all but moments_fb)")
    g.add_argument("--n", nargs="+", action=_ListAction, metavar="N",
                   help="samples per call (default 2048 CPU, 16384 CUDA)")
    g.add_argument("--dims", "-d", nargs="+", action=_ListAction, metavar="D",
                   help="input dimensions (default 16 64 256)")
    g.add_argument("--widths", "-m", nargs="+", action=_ListAction, metavar="M",
                   help="explicit widths (16384, 2^14, 16k); default: --min-width ... --max-width")
    g.add_argument("--min-width", type=parse_width, help="default 2^10")
    g.add_argument("--max-width", type=parse_width,
                   help="default 2^16 on CPU, 2^22 on CUDA; widths beyond the memory budget are skipped per "
                        "implementation")
    g.add_argument("--width-step", type=int, help="factor between widths (default 4)")
    g.add_argument("--orders", nargs="+", action=_ListAction, metavar="K",
                   help="Taylor orders: ints or 'exact' (default 1 2 4 exact)")
    g.add_argument("--activations", nargs="+", action=_ListAction, metavar="ACT", help="default tanh gelu")
    g.add_argument("--dtypes", nargs="+", action=_ListAction, metavar="DTYPE",
                   help="default float32 on CPU; float32 bfloat16 on CUDA")
    g.add_argument("--outputs", type=int, default=1, help="readout rows c (net, moments); default 1")
    g.add_argument("--grad-wrt", default="w", metavar="LIST",
                   help=f"fwd+bwd ops: inputs to differentiate, of {','.join(GRAD_TARGETS)} (default w, the training "
                        "setting; e.g. w,x,w0 also asks for the x and w0 gradients)")
    g.add_argument("--bias", action="store_true", help="pass biases b0 and b")
    g.add_argument("--signs", action="store_true", help="pass a fixed (m,) sign vector (features, net)")
    g.add_argument("--impls", nargs="+", action=_ListAction, metavar="IMPL",
                   help=f"of {', '.join(IMPLS)} (default all)")
    g.add_argument("--tf32", action="store_true",
                   help="CUDA: allow TF32 matmuls (torch.backends.cuda.matmul.allow_tf32) for every implementation "
                        "and the matmul ceiling; the float32 kernels then run on tensor cores")
    g.add_argument("--no-compile", action="store_true", help="leave out the torch.compile baseline")
    g.add_argument("--compile-mode", help="torch.compile mode (default: 'default' on CPU, "
                                          "'max-autotune-no-cudagraphs' on CUDA)")
    g.add_argument("--width-sweep", action="store_true", default=None,
                   help="also find the largest width each implementation fits in the memory budget")
    g.add_argument("--no-width-sweep", dest="width_sweep", action="store_false",
                   help="no width sweep (the cuda-target preset has one)")
    g.add_argument("--sweep-compile-mode", default="default",
                   help="torch.compile mode of the width sweep, which measures memory only (default 'default')")

    g = p.add_argument_group("how to measure")
    g.add_argument("--repeats", type=int, help="timed samples per implementation (default 10; --quick 5)")
    g.add_argument("--warmup", type=int, help="warm-up calls before timing, compilation excluded (default 2)")
    g.add_argument("--min-time", type=float, help="seconds per sample; fast calls are looped (default 0.05)")
    g.add_argument("--max-seconds", type=float,
                   help="cap on timing seconds per implementation and case: slow calls get fewer repeats, "
                        "at least 3 (default 30)")
    g.add_argument("--memory", choices=["subprocess", "inprocess", "none"], default="subprocess",
                   help="CPU peak memory: a fresh process per (case, implementation) (default), this process, or off; "
                        "CUDA always uses the allocator's statistics unless 'none'")
    g.add_argument("--memory-budget", type=float, metavar="GB",
                   help="memory budget in GB (GiB, 2^30 bytes): cases predicted above it are skipped per "
                        "implementation, and the plots mark where each implementation reaches it (default: the "
                        "device's memory)")
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--hugepages", action="store_true",
                   help="CPU: run everything with glibc's huge-page malloc (GLIBC_TUNABLES=glibc.malloc.hugetlb=1, "
                        "the baselines' best configuration: their fresh n x m temporaries then fault in 2 MiB pages); "
                        "the benchmark restarts itself with the setting, recorded under allocator")
    g.add_argument("--no-check", action="store_true", help="skip the agreement check against the eager reference")
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("output")
    g.add_argument("--out", default="out/bench", help="output directory (default out/bench)")
    g.add_argument("--tag", help="file name stem (default: the preset, 'quick' or 'grid', and the device)")
    g.add_argument("--no-plots", action="store_true")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve(args) -> dict:
    """Settings: the device's full grid, then --quick / --preset, then the options given."""
    s = base_settings(args.device, quick=args.quick, preset=args.preset)
    explicit = {
        "ops": args.ops, "n": args.n, "dims": args.dims, "widths": args.widths, "orders": args.orders,
        "activations": args.activations, "dtypes": args.dtypes, "min_width": args.min_width,
        "max_width": args.max_width, "width_step": args.width_step, "repeats": args.repeats,
        "warmup": args.warmup, "min_time": args.min_time, "max_seconds": args.max_seconds,
        "width_sweep": args.width_sweep,
    }
    s.update({k: v for k, v in explicit.items() if v is not None})
    try:
        normalize(s)
    except ValueError as exc:
        raise SystemExit(f"taylornet bench: {exc}") from None
    device = s["device"]
    impls = args.impls or list(IMPLS)
    if args.no_compile:
        impls = [i for i in impls if i != "compiled"]
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        raise SystemExit(f"taylornet bench: --impls: unknown {', '.join(bad)} (expected {', '.join(IMPLS)})")
    s["impls"] = [i for i in IMPLS if i in impls]
    grad = _csv_list(args.grad_wrt)
    bad = [g for g in grad if g not in GRAD_TARGETS]
    if bad or not grad:
        raise SystemExit(f"taylornet bench: --grad-wrt: expected some of {','.join(GRAD_TARGETS)}, "
                         f"got {args.grad_wrt!r}")
    s.update(outputs=args.outputs, grad_wrt=grad, bias=args.bias, signs=args.signs, memory=args.memory,
             memory_budget_gb=args.memory_budget, threads=args.threads, check=not args.no_check,
             seed=args.seed, compile_mode=args.compile_mode, sweep_compile_mode=args.sweep_compile_mode,
             preset=args.preset, quick=args.quick, tf32=args.tf32 and device == "cuda")
    s["tag"] = args.tag or (f"{args.preset or ('quick' if args.quick else 'grid')}-{device}"
                            + ("-tf32" if s["tf32"] else ""))
    return s


def run(args) -> int:
    if getattr(args, "hugepages", False):
        from .hugepages import reexec_with_hugepages
        reexec_with_hugepages()  # returns only when the setting is already in force
    if getattr(args, "training", False):
        from .training import run as run_training
        return run_training(args)
    import torch

    from ..utils import results
    from ..utils.progress import progress_bar
    from . import plots, report
    from .budget import budget_width
    from .runner import Settings, State, run_case, width_sweep

    started = time.time()
    s = resolve(args)
    device = s["device"]
    if device == "cuda" and not torch.cuda.is_available():
        print("taylornet bench: --device cuda, but this torch build sees no CUDA device", file=sys.stderr)
        return 2
    if s["threads"]:
        torch.set_num_threads(s["threads"])
    if args.tf32 and device != "cuda":
        print("taylornet bench: --tf32 applies to CUDA only; ignored", file=sys.stderr)
    torch.backends.cuda.matmul.allow_tf32 = s["tf32"]
    total_mem = results.total_memory(device)
    budget_bytes = s["memory_budget_gb"] * 2**30 if s["memory_budget_gb"] else total_mem
    s["memory_budget_bytes"] = budget_bytes
    cases = grid(s)
    settings = Settings(impls=tuple(s["impls"]), repeats=s["repeats"], warmup=s["warmup"], min_time=s["min_time"],
                        max_seconds=s["max_seconds"], memory=s["memory"], budget_bytes=budget_bytes,
                        compile_mode=s["compile_mode"], sweep_compile_mode=s["sweep_compile_mode"],
                        threads=s["threads"], check=s["check"], seed=s["seed"])
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / f"{s['tag']}.json", out_dir / f"{s['tag']}.csv"
    machine, software, env = results.machine_info(device), results.software_info(), report.allocator_env()
    if device == "cpu" and s["memory"] == "subprocess":
        from .memory import start_method
        s["memory_worker_start_method"] = start_method()
    notes = []
    load = machine.get("load_average")
    if load and machine.get("cpu_affinity") and load[0] > 0.5 * machine["cpu_affinity"]:
        notes.append(f"machine busy at start: load average {load[0]:.2f} on {machine['cpu_affinity']} CPUs")

    rows, budget_rows, sweep_rows = [], [], []
    state = State()
    status = "complete"

    def save(final=False):
        budget_rows[:] = _budget_summary(rows, budget_bytes, budget_width)
        doc = report.document(settings=s, argv=sys.argv, machine=machine, software=software, env=env, rows=rows,
                              budget=budget_rows, sweep=sweep_rows, status=status if final else "running",
                              started=started, notes=notes)
        report.write_json(json_path, doc)
        report.write_csv(csv_path, rows, {k: v for k, v in s.items() if not isinstance(v, dict)})

    print(f"taylornet bench: {len(cases)} case(s) × {', '.join(s['impls'])} + matmul ceiling on {device} "
          f"({machine['cpu'] if device == 'cpu' else machine.get('gpu', {}).get('name')}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; memory budget {budget_bytes / 2**30:.3g} GiB")
    if notes:
        print("note: " + "; ".join(notes))
    bar = progress_bar(len(cases), unit="case", disable=args.no_progress)
    try:
        for case in cases:
            bar.set_description(case.slug(), refresh=False)
            rows_case = run_case(case, settings, state, progress=lambda t: bar.set_postfix_str(t))
            rows.extend(rows_case)
            bar.write(report.format_case(rows_case) + "\n", file=sys.stdout)
            bar.update(1)
            save()
        if s["width_sweep"]:
            for dtype in s["dtypes"]:
                base = next((c for c in cases if c.dtype == dtype), None)
                if base is None:
                    continue
                for impl in s["impls"]:
                    bar.set_description(f"width sweep {dtype} {impl}", refresh=True)
                    sweep_rows.append(width_sweep(base, impl, settings,
                                                  progress=lambda t: bar.set_postfix_str(t)))
                    save()
    except KeyboardInterrupt:
        status = "interrupted"
        bar.write("\ninterrupted: writing the results measured so far", file=sys.stderr)
    finally:
        bar.close()
    s["elapsed_s"] = time.time() - started
    save(final=True)
    written = [json_path, csv_path]
    if not args.no_plots:
        pngs = plots.plot_results(rows, out_dir, s["tag"], budget_bytes)
        if not pngs and rows:
            print("plots: matplotlib is not installed (pip install 'taylornet[bench]'); no PNGs drawn")
        written += pngs
    text = report.format_budget(budget_rows, budget_bytes / 2**30)
    if text:
        print(text)
    for sw in sweep_rows:
        w = sw.get("largest_width")
        print(f"width sweep  {sw['impl']:<10} {sw['series']}: largest m that fits "
              f"{f'{w:,}' if w else '—'} ({sw['how']}; limit {sw['limit_bytes'] / 2**30:.3g} GiB)")
    _summary(rows)
    print(f"{'interrupted after' if status == 'interrupted' else 'done in'} {time.time() - started:.0f} s; wrote "
          + ", ".join(str(p) for p in written))
    return 130 if status == "interrupted" else 0


def _budget_summary(rows, budget_bytes, budget_width) -> list[dict]:
    """Per (series, implementation): the width at which inputs + peak reach the budget."""
    from collections import defaultdict

    groups = defaultdict(list)
    labels = {}
    for r in rows:
        if r["impl"] == CEILING or r.get("peak_bytes") is None:
            continue
        key = (r["op"], r["n"], r["d"], str(r["order"]), r["activation"], r["dtype"], r["device"],
               r["outputs"], "+".join(r["grad_wrt"]), r["bias"], r["signs"], r["impl"])
        groups[key].append((r["m"], r["total_bytes"]))
        labels[key] = f"{OPS[r['op']][2]} n={r['n']} d={r['d']} " \
                      f"{'exact' if r['order'] == 'exact' else 'K=' + str(r['order'])} {r['activation']} {r['dtype']}"
    out = []
    for key, pts in groups.items():
        cross = budget_width(pts, budget_bytes)
        out.append({"series": labels[key], "impl": key[-1], "budget_bytes": budget_bytes,
                    "width": cross["width"] if cross else None, "how": cross["how"] if cross else None,
                    "points": sorted(pts)})
    return out


def _summary(rows) -> None:
    """Geometric-mean speedups of taylornet per op, over the cases where both ran."""
    import math
    from collections import defaultdict

    acc = defaultdict(list)
    for r in rows:
        if r["impl"] != "taylornet":
            continue
        for base in ("eager", "compiled"):
            v = r.get(f"speedup_vs_{base}")
            if v:
                acc[(r["op"], base)].append(v)
    if not acc:
        return
    parts = []
    for op in OPS:
        vals = [f"×{math.exp(sum(map(math.log, acc[(op, b)])) / len(acc[(op, b)])):.2f} vs {b}"
                for b in ("eager", "compiled") if acc.get((op, b))]
        if vals:
            count = max(len(acc.get((op, b), [])) for b in ("eager", "compiled"))
            parts.append(f"  {OPS[op][2]:<18} " + ", ".join(vals) + f"  ({count} case{'s' if count > 1 else ''})")
    print("taylornet speedup, geometric mean over the cases:\n" + "\n".join(parts))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="taylornet bench")
    add_arguments(parser)
    return run(parser.parse_args(argv))
