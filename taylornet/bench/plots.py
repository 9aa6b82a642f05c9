"""PNG plots of a results document: speedup, time and peak memory against width.

One figure of each kind per (dtype, activation[, n]) group, with a row per op and a column per
input dimension d. Needs matplotlib (``pip install taylornet[bench]``); without it no plots are
drawn and the run says so.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from ..utils.plotting import plain_log_y, pyplot, save_figure
from .budget import budget_width
from .cases import BASELINES, CEILING, IMPLS, OPS

_COLORS = {"taylornet": "tab:blue", "eager": "tab:red", "compiled": "tab:orange", CEILING: "black"}
_STYLES = ["-", "--", ":", "-."]
_MARKERS = ["o", "s", "^", "D", "v", "P"]


def _human(m: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if m >= div:
            return f"{m / div:.3g}{unit}"
    return f"{m:.0f}"


def _order_key(o):
    return (1, 0) if o == "exact" else (0, int(o))


def _groups(rows):
    groups = defaultdict(list)
    for r in rows:
        key = (r["device"], r["dtype"], r["activation"], r["n"], r["outputs"], tuple(r["grad_wrt"]),
               r["bias"], r["signs"])
        groups[key].append(r)
    return groups


def _ok(r):
    return r.get("status") == "ok" and r.get("median_s")


def _axes(plt, ops, dims, title):
    fig, axes = plt.subplots(len(ops), len(dims), figsize=(max(6.4, 4.2 * len(dims)), 3.0 * len(ops) + 0.9),
                             squeeze=False, sharex=True)
    fig.suptitle(title, fontsize=9)
    for i, op in enumerate(ops):
        for j, d in enumerate(dims):
            ax = axes[i][j]
            ax.set_title(f"{OPS[op][2]}, d={d}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if i == len(ops) - 1:
                ax.set_xlabel("width m")
    return fig, axes


def plot_results(rows: list[dict], out_dir: Path, tag: str, budget_bytes: float | None) -> list[Path]:
    """Draw the figures; returns the written paths ([] without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return []
    paths = []
    groups = _groups(rows)
    same_name = defaultdict(int)
    for key in groups:
        same_name[key[1:3]] += 1
    for key, grp in groups.items():
        device, dtype, act, n = key[:4]
        suffix = f"{dtype}_{act}" + (f"_n{n}" if same_name[(dtype, act)] > 1 else "")
        ops = [op for op in OPS if any(r["op"] == op for r in grp)]
        dims = sorted({r["d"] for r in grp})
        orders = sorted({r["order"] for r in grp}, key=_order_key)
        title = f"{device} {dtype} {act}, n={n}"
        cells = defaultdict(list)
        for r in grp:
            cells[(r["op"], r["d"], r["order"], r["impl"])].append(r)

        def series(op, d, order, impl, value):
            pts = sorted((r["m"], value(r)) for r in cells[(op, d, order, impl)] if value(r) is not None)
            return [p[0] for p in pts], [p[1] for p in pts]

        # speedup of taylornet over each baseline
        fig, axes = _axes(plt, ops, dims, f"taylornet speedup over the reference (t_ref / t_taylornet)\n{title}")
        for i, op in enumerate(ops):
            for j, d in enumerate(dims):
                ax = axes[i][j]
                for k, order in enumerate(orders):
                    for b, base in enumerate(BASELINES):
                        xs, ys = series(op, d, order, "taylornet",
                                        lambda r, base=base: r.get(f"speedup_vs_{base}") if _ok(r) else None)
                        if xs:
                            ax.plot(xs, ys, _STYLES[b], marker=_MARKERS[k % len(_MARKERS)],
                                    color=f"C{k}", label=f"order {order} vs {base}")
                ax.axhline(1.0, color="gray", lw=0.8)
                ax.set_xscale("log", base=2)
                plain_log_y(ax, "×", subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0))
                if j == 0:
                    ax.set_ylabel("speedup (×)")
        _legend(fig, axes)
        paths.append(save_figure(fig, out_dir / f"{tag}_speedup_{suffix}.png"))

        # time against width, with the matmul ceiling
        fig, axes = _axes(plt, ops, dims, f"median time per call vs width (log-log), matmul = ceiling\n{title}")
        for i, op in enumerate(ops):
            for j, d in enumerate(dims):
                ax = axes[i][j]
                for k, order in enumerate(orders):
                    for impl in IMPLS + (CEILING,):
                        xs, ys = series(op, d, order, impl, lambda r: r["median_s"] * 1e3 if _ok(r) else None)
                        if xs:
                            ax.plot(xs, ys, _STYLES[k % len(_STYLES)], marker=_MARKERS[k % len(_MARKERS)],
                                    color=_COLORS[impl], label=f"{impl}, order {order}")
                        if len(xs) >= 2 and impl != CEILING:  # the scaling exponent: time ~ m^p
                            p = math.log(ys[-1] / ys[0]) / math.log(xs[-1] / xs[0])
                            ax.annotate(f"∝m^{p:.2f}", (xs[-1], ys[-1]), textcoords="offset points",
                                        xytext=(3, 0), fontsize=6, color=_COLORS[impl], va="center")
                ax.set_xscale("log", base=2)
                plain_log_y(ax)
                if j == 0:
                    ax.set_ylabel("median ms per call")
        _legend(fig, axes)
        paths.append(save_figure(fig, out_dir / f"{tag}_time_{suffix}.png"))

        # peak memory against width, the budget and where each implementation crosses it
        if any(r.get("peak_bytes") is not None for r in grp):
            budget_gib = budget_bytes / 2**30 if budget_bytes else None
            fig, axes = _axes(plt, ops, dims, f"peak memory (inputs + one call) vs width — {title}\n"
                              "budget width: ★ extrapolated (dotted), × measured")
            for i, op in enumerate(ops):
                for j, d in enumerate(dims):
                    ax = axes[i][j]
                    marks = 0
                    for k, order in enumerate(orders):
                        for impl in IMPLS:
                            xs, ys = series(op, d, order, impl,
                                            lambda r: r["total_bytes"] if r.get("peak_bytes") is not None else None)
                            if not xs:
                                continue
                            color = _COLORS[impl]
                            ax.plot(xs, [y / 2**30 for y in ys], _STYLES[k % len(_STYLES)],
                                    marker=_MARKERS[k % len(_MARKERS)], color=color, label=f"{impl}, order {order}")
                            cross = budget_width(list(zip(xs, ys)), budget_bytes) if budget_bytes else None
                            if not cross or cross["width"] <= 0:
                                continue
                            if cross["how"] == "extrapolated" and cross["width"] > xs[-1]:
                                ax.plot([xs[-1], cross["width"]], [ys[-1] / 2**30, budget_gib], ":", color=color,
                                        lw=1)
                            ax.plot([cross["width"]], [budget_gib], "x" if cross["how"] == "measured" else "*",
                                    color=color, ms=9)
                            ax.annotate(f"m≈{_human(cross['width'])}", (cross["width"], budget_gib),
                                        textcoords="offset points", xytext=(-10, -12 - 9 * marks), fontsize=7,
                                        color=color, ha="right")
                            marks += 1
                    if budget_gib:
                        ax.axhline(budget_gib, color="gray", ls="--", lw=1, label=f"budget {budget_gib:.3g} GiB")
                    ax.set_xscale("log", base=2)
                    plain_log_y(ax)
                    if j == 0:
                        ax.set_ylabel("GiB")
            _legend(fig, axes)
            paths.append(save_figure(fig, out_dir / f"{tag}_memory_{suffix}.png"))
    return paths


def _legend(fig, axes):
    handles, labels = {}, []
    for row in axes:
        for ax in row:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in handles:
                    handles[lab] = h
                    labels.append(lab)
    if labels:
        ncol = min(4, len(labels))
        fig.legend([handles[lab] for lab in labels], labels, loc="lower center", fontsize=7, ncol=ncol,
                   bbox_to_anchor=(0.5, 0.0), frameon=False)
        rows = (len(labels) + ncol - 1) // ncol
        height = fig.get_size_inches()[1]
        fig.tight_layout(rect=(0, (0.17 * rows + 0.1) / height, 1, 1 - 0.45 / height))
    else:
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_size_inches()[1]))
