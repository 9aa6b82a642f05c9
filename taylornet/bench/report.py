"""The readable table, the JSON and CSV files, and what they record about the machine.

Every result row is one (case, implementation): the three implementations and the "matmul"
ceiling. Derived columns:

    speedup ×eager / ×compiled   t_baseline / t_this          (> 1: this row is faster)
    GFLOP/s                      model FLOPs (flops.py) / t_this
    % of matmul                  t_matmul / t_this             (= GFLOP/s over the ceiling's)
    peak MiB                     inputs + the call's own peak   (what the device must hold)
    mem ÷                        peak_eager / peak_this        (> 1: this row needs less)
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from ..utils import results
from .cases import BASELINES, CEILING, IMPLS

SCHEMA = "taylornet-bench/1"


# ---- what the numbers depend on (the machine and software: taylornet.utils.results) -------------

_ENV_PREFIXES = ("MALLOC_", "GLIBC_TUNABLES", "LD_PRELOAD", "OMP_", "KMP_", "MKL_", "OPENBLAS_", "GOMP_",
                 "TORCH", "PYTORCH_", "CUDA_", "JEMALLOC", "TCMALLOC")


def allocator_env() -> dict:
    """Allocator and threading settings: on CPU the eager baseline's time is dominated by page
    faults of fresh n x m temporaries, which these settings change."""
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(_ENV_PREFIXES)}
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError, AttributeError):
        libc = None
    return {
        "env": env,
        "libc": libc,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
    }


# ---- derived columns -----------------------------------------------------------------------

def add_derived(rows: list[dict]) -> None:
    """Fill speedups, FLOP/s, ceiling fraction and memory ratio for the rows of one case."""
    by = {r["impl"]: r for r in rows}

    def t(name):
        r = by.get(name)
        return r.get("median_s") if r and r.get("status") == "ok" else None

    def mem(name):
        r = by.get(name)
        return r.get("total_bytes") if r and r.get("peak_bytes") is not None else None

    t_mm = t(CEILING)
    for r in rows:
        tr = t(r["impl"])
        if tr is None:
            continue
        r["gflops_per_s"] = r["flops"] / tr / 1e9 if r.get("flops") else None
        r["floor_ratio"] = tr / r["floor_s"] if r.get("floor_s") else None
        r["ceiling_fraction"] = t_mm / tr if t_mm else None
        if r["impl"] == CEILING:
            continue
        for base in BASELINES:
            tb = t(base)
            r[f"speedup_vs_{base}"] = tb / tr if tb else None
        me, mr = mem("eager"), mem(r["impl"])
        r["memory_ratio_vs_eager"] = me / mr if me and mr else None


# ---- table ----------------------------------------------------------------------------------

def _fmt(v, spec, width, none="—"):
    return (format(v, spec) if v is not None else none).rjust(width)


def _time(v):
    if v is None:
        return None
    return v * 1e3


COLUMNS = ("impl", "median ms", "IQR", "×eager", "×compiled", "GFLOP/s", "%matmul", "×floor", "peak MiB", "mem ÷")
_WIDTHS = (11, 11, 6, 8, 10, 9, 8, 8, 10, 8)


def table_header() -> str:
    return "  " + "".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(COLUMNS, _WIDTHS)))


def format_case(rows: list[dict]) -> str:
    """The block of one case: a title line, the column header and one line per implementation."""
    if not rows:
        return ""
    lines = [rows[0]["case"], table_header()]
    order = {name: i for i, name in enumerate(IMPLS + (CEILING,))}
    for r in sorted(rows, key=lambda r: order.get(r["impl"], 99)):
        w = _WIDTHS
        head = "  " + r["impl"].ljust(w[0])
        if r.get("status") != "ok":
            lines.append(head + f"{r.get('status', '?')}: {r.get('note', '')}"[:110])
            continue
        total = r.get("total_bytes") if r.get("peak_bytes") is not None else None
        mem = None if total is None else total / 2**20
        mem_s = _fmt(mem, ".1f", w[8]) if not r.get("memory_upper_bound") else (f"≤{mem:.1f}").rjust(w[8])
        frac = r.get("ceiling_fraction")
        line = (head + _fmt(_time(r.get("median_s")), ".2f", w[1])
                + _fmt(100 * r["iqr_rel"] if r.get("iqr_rel") is not None else None, ".0f", w[2] - 1) + "%"
                + _fmt(r.get("speedup_vs_eager"), ".2f", w[3])
                + _fmt(r.get("speedup_vs_compiled"), ".2f", w[4])
                + _fmt(r.get("gflops_per_s"), ".1f", w[5])
                + _fmt(100 * frac if frac is not None else None, ".0f", w[6] - 1) + "%"
                + _fmt(r.get("floor_ratio"), ".2f", w[7])
                + mem_s
                + _fmt(r.get("memory_ratio_vs_eager"), ".1f", w[9]))
        if r.get("check") == "MISMATCH":
            line += f"  MISMATCH vs eager (rel err {r.get('max_rel_error'):.2g})"
        lines.append(line)
    return "\n".join(lines)


def format_budget(budget_rows: list[dict], budget_gib: float, max_lines: int = 30) -> str:
    if not budget_rows:
        return ""
    lines = [f"width at which each implementation reaches the {budget_gib:.3g} GiB memory budget "
             "(inputs + the call's peak):"]
    for b in budget_rows[:max_lines]:
        w = b.get("width")
        what = f"m ≈ {w:,.0f} ({b['how']})" if w else "no growth measured"
        lines.append(f"  {b['series']:<62} {b['impl']:<10} {what}")
    if len(budget_rows) > max_lines:
        lines.append(f"  ... {len(budget_rows) - max_lines} more under memory_budget in the JSON")
    return "\n".join(lines)


# ---- files ------------------------------------------------------------------------------------

def write_json(path: Path, document: dict) -> None:
    results.write_json(path, document)


CSV_FIRST = ("op", "n", "d", "m", "order", "activation", "dtype", "device", "outputs", "grad_wrt", "bias",
             "signs", "impl", "status", "median_s", "q25_s", "q75_s", "iqr_rel", "min_s", "samples", "number",
             "speedup_vs_eager", "speedup_vs_compiled", "flops", "gflops_per_s", "ceiling_fraction",
             "floor_s", "floor_ratio", "floor_flops_per_s",
             "peak_bytes", "input_bytes", "total_bytes", "memory_ratio_vs_eager", "memory_method",
             "memory_upper_bound", "compile_s", "max_rel_error", "check", "note")


def write_csv(path: Path, rows: list[dict], settings: dict) -> None:
    """One line per result row, the run's settings repeated in ``setting_*`` columns."""
    settings = {f"setting_{k}": " ".join(map(str, v)) if isinstance(v, (list, tuple)) else v
                for k, v in settings.items() if not isinstance(v, dict)}
    results.write_csv(path, [{**r, **settings} for r in rows], first=CSV_FIRST)


def document(*, settings: dict, argv, machine: dict, software: dict, env: dict, rows: list[dict],
             budget: list[dict], sweep: list[dict], status: str, started: float, notes: list[str]) -> dict:
    return {
        "schema": SCHEMA,
        "status": status,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "elapsed_s": time.time() - started,
        "argv": list(argv) if argv is not None else None,
        "settings": settings,
        "machine": machine,
        "software": software,
        "allocator": env,
        "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "notes": notes,
        "results": rows,
        "memory_budget": budget,
        "width_sweep": sweep,
    }
