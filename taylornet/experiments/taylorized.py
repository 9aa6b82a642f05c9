"""Taylorized training (Bai, Krause, Wang, Xiong and Socher 2020, arXiv:2002.04010, its Figure 1).

The full network f = scale * sum_r a_r sigma(w0_r.x + w_r.x) (order "exact") and its Taylor models of
orders 1..K in the movement W start from the same initialization and train with the same SGD, learning
rate and batches. At a practical, large learning rate W moves far from the initialization, and the
claim is that the Taylor models track the full network better as the order grows, the linearized
(NTK) model being the worst; and that at a fixed learning rate the linearized model approaches the
full network as the width grows (the NTK regime): its distance falls like m^(-1/2) (an upper bound;
the order-2 model's like m^(-1)).

The width sweep trains the full network and its order-1 and order-2 models with the fused ops up to
m = 2^20 neurons. The autograd references (``taylornet.reference`` eager and under torch.compile)
are not run at those widths: their peak memory and time per step are measured at small widths in
fresh processes and extrapolated, and each sweep width says whether they would fit in memory.

Tasks: the scikit-learn digits (10 classes, cross-entropy on the logits, test accuracy) and a
synthetic regression on a low-rank polynomial of x on the sphere (mean squared error, test error
normalized by the target variance). Only W trains (the readout stays fixed), as in the theory.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..modules import TaylorNet
from .common import (
    Interruptible,
    Results,
    Verdict,
    add_common_arguments,
    fit_power_law,
    progress,
    pyplot,
    resolve_config,
    setup,
)
from .data import LowRankPolynomial, Split, load_digits, sample_sphere

__all__ = ["TaylorizedConfig", "PRESETS", "Task", "make_task", "make_models", "train_together",
           "compare_outputs", "width_sweep", "reference_costs", "reference_measurements", "out_of_memory_width",
           "judge", "add_arguments", "run"]

NAME = "taylorized"
FULL = "exact"


@dataclass
class TaylorizedConfig:
    width: int = 4096
    orders: tuple[int, ...] = (1, 2, 3, 4)
    activation: str = "softplus"
    steps: int = 1000
    batch_size: int = 128
    lr: float = 5.0
    synthetic_lr: float = 2.0
    eval_every: int = 10
    tasks: tuple[str, ...] = ("digits", "synthetic")
    sweep_widths: tuple[int, ...] = (2**8, 2**10, 2**12, 2**14, 2**16, 2**18, 2**20)
    sweep_steps: int = 15  # at m = 2^20 a step of the three models takes seconds on two CPU cores
    sweep_orders: tuple[int, ...] = (1, 2)
    reference_widths: tuple[int, ...] = (2**10, 2**12)  # where the autograd references are measured
    memory_budget_gib: float = 0.0  # 0: this machine's physical memory
    tolerance: float = 0.1
    synthetic_dim: int = 16
    synthetic_rank: int = 2
    synthetic_degree: int = 2
    synthetic_train: int = 1024
    synthetic_test: int = 512


PRESETS = {
    "quick": dict(width=2048, steps=400, sweep_widths=(2**8, 2**10, 2**12, 2**14), sweep_steps=100,
                  reference_widths=()),
    "large": dict(width=2**20, steps=2000, batch_size=256, eval_every=20,
                  sweep_widths=(2**12, 2**14, 2**16, 2**18, 2**20, 2**22), sweep_steps=1000),
}


@dataclass
class Task:
    """A data set with its learning rate, loss (cross-entropy for classes, else MSE) and test metric."""

    name: str
    data: Split
    out_features: int
    lr: float
    metric_name: str

    def outputs(self, model: TaylorNet, x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        return out if self.out_features > 1 else out.squeeze(-1)

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y) if self.out_features > 1 else F.mse_loss(out, y)

    def metric(self, out: torch.Tensor, y: torch.Tensor) -> float:
        if self.out_features > 1:
            return (out.argmax(-1) == y).double().mean().item()
        return (F.mse_loss(out, y) / y.var()).item()


def make_task(name: str, cfg: TaylorizedConfig, seed: int, device) -> Task:
    """The digits task, or the synthetic regression drawn from ``seed``."""
    if name == "digits":
        return Task("digits", load_digits().to(device), 10, cfg.lr, "test accuracy")
    if name == "synthetic":
        g = torch.Generator().manual_seed(seed)
        target = LowRankPolynomial.random(cfg.synthetic_dim, cfg.synthetic_rank, cfg.synthetic_degree, g)
        x_train = sample_sphere(cfg.synthetic_train, cfg.synthetic_dim, g)
        x_test = sample_sphere(cfg.synthetic_test, cfg.synthetic_dim, g)
        data = Split(x_train, target(x_train), x_test, target(x_test)).to(device)
        return Task("synthetic", data, 1, cfg.synthetic_lr, "test error (MSE / variance)")
    raise ValueError(f"unknown task {name!r}: expected digits or synthetic")


def make_models(task: Task, width: int, orders, activation: str, device) -> dict:
    """The full network and its Taylor models of ``orders``, all with the same initialization."""
    d = task.data.x_train.shape[1]
    full = TaylorNet(d, width, task.out_features, activation=activation, order=FULL, device=device)
    models = {FULL: full}
    for k in orders:
        models[k] = TaylorNet(d, width, task.out_features, activation=activation, order=k, device=device)
        models[k].load_state_dict(full.state_dict())
    return models


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Index batches of shuffled epochs, forever."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start:start + batch_size]


def compare_outputs(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(cosine similarity, relative L2 distance ||out - ref|| / ||ref||) over all test outputs."""
    out, ref = out.reshape(-1).double(), ref.reshape(-1).double()
    cosine = F.cosine_similarity(out, ref, dim=0).item()
    return cosine, ((out - ref).norm() / ref.norm()).item()


def train_together(task: Task, models: dict, steps: int, batch_size: int, eval_every: int, seed: int,
                   bar, train_rows: list | None = None, eval_rows: list | None = None,
                   step_seconds: list | None = None) -> tuple[list[dict], list[dict]]:
    """Trains every model with SGD on the same batches; returns (per-step rows, evaluation rows),
    appended to ``train_rows`` / ``eval_rows`` when given (so an interrupted run keeps them), and the
    seconds of every step (all models, without evaluations) to ``step_seconds``.

    Per step: the training loss of the batch and ||W - W_init||_F of every model. Every
    ``eval_every`` steps (and at the first and last): the test metric and the cosine similarity and
    relative distance of each model's test outputs to the full network's.
    """
    data = task.data
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=task.lr) for k, m in models.items()}
    batches = _batches(data.x_train.shape[0], min(batch_size, data.x_train.shape[0]),
                       torch.Generator().manual_seed(seed))
    train_rows = [] if train_rows is None else train_rows
    eval_rows = [] if eval_rows is None else eval_rows
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            eval_rows.extend(_evaluate(task, models, step))
        if step == steps:
            break
        idx = next(batches).to(data.x_train.device)
        x, y = data.x_train[idx], data.y_train[idx]
        started = time.perf_counter()
        for label, model in models.items():
            loss = task.loss(task.outputs(model, x), y)
            optimizers[label].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[label].step()
            train_rows.append({"task": task.name, "step": step + 1, "model": str(label),
                               "train_loss": loss.item(), "weight_distance": model.weight.detach().norm().item()})
        if step_seconds is not None:
            step_seconds.append(time.perf_counter() - started)
        bar.update(1)
    return train_rows, eval_rows


@torch.no_grad()
def _evaluate(task: Task, models: dict, step: int) -> list[dict]:
    outs = {label: task.outputs(model, task.data.x_test) for label, model in models.items()}
    rows = []
    for label, out in outs.items():
        cosine, distance = compare_outputs(out, outs[FULL]) if step > 0 else (math.nan, math.nan)
        rows.append({"task": task.name, "step": step, "model": str(label),
                     "test_metric": task.metric(out, task.data.y_test),
                     "cosine_to_full": 1.0 if label == FULL else cosine,
                     "distance_to_full": 0.0 if label == FULL else distance})
    return rows


class _NeuronSteps:
    """The width sweep's progress in neuron-steps (a step at width m counts m: its cost grows like m),
    so that the bar's rate and remaining time hold across widths."""

    def __init__(self, bar, width: int):
        self.bar, self.width = bar, width

    def update(self, n: int = 1) -> None:
        self.bar.update(n * self.width)


def width_sweep(task: Task, cfg: TaylorizedConfig, seed: int, device, bar, rows: list,
                on_row=lambda row: None) -> None:
    """For each width: the full network and its ``sweep_orders`` Taylor models trained together;
    their final cosine / relative distance to the full network, the median seconds of a training step
    (all models) and the peak memory. Appends one row per width to ``rows`` (and ``on_row``) as it
    finishes."""
    from ..bench.memory import hwm_bytes, reset_hwm, rss_bytes, trim_heap

    for width in cfg.sweep_widths:
        bar.set_description(f"{NAME}: width sweep on {task.name}, m={width}")
        steps = _NeuronSteps(bar, width)
        torch.manual_seed(seed)
        trim_heap()
        resettable = device.type == "cpu" and reset_hwm()
        base = rss_bytes() if resettable else None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        models = make_models(task, width, cfg.sweep_orders, cfg.activation, device)
        seconds = []
        _, evals = train_together(task, models, cfg.sweep_steps, cfg.batch_size, cfg.sweep_steps, seed, steps,
                                  step_seconds=seconds)
        peak = hwm_bytes() - base if resettable and base is not None else None
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device)
        del models
        row = {"width": width, "seconds_per_step": statistics.median(seconds) if seconds else math.nan,
               "fused_peak_bytes": peak}
        for k in cfg.sweep_orders:
            final = next(r for r in evals if r["step"] == cfg.sweep_steps and r["model"] == str(k))
            row[f"distance_order{k}"] = final["distance_to_full"]
            row[f"cosine_order{k}"] = final["cosine_to_full"]
        rows.append(row)
        on_row(row)
        dists = ", ".join(f"order {k} {row[f'distance_order{k}']:.3g}" for k in cfg.sweep_orders)
        bar.write(f"  m={width:<8} distance to the full network: {dists}; {row['seconds_per_step']:.3f} s/step"
                  + (f", peak {peak / 2**30:.2f} GiB" if peak else ""), file=sys.stderr)


def _memory_budget(cfg: TaylorizedConfig) -> float:
    """Bytes the references' predicted peaks are compared with: --memory-budget-gib, else the
    machine's physical memory."""
    if cfg.memory_budget_gib > 0:
        return cfg.memory_budget_gib * 2**30
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return math.inf


def reference_costs(task: Task, cfg: TaylorizedConfig, device, bar) -> dict:
    """Peak memory and seconds of one training step of each sweep model under the autograd
    references, measured at ``reference_widths`` (compiled: the widest only) and extrapolated in m.

    Memory: one forward+backward (gradient in W) on a batch, and one forward on the test set, each
    in a fresh process (``taylornet.bench.memory``), for the full network and every sweep order;
    the sweep's step runs all of them in turn, so its peak is the largest of these plus the models'
    own tensors (W0, W, its gradient, the readout). Time: the sum over the models of the eager
    step, timed here (median of three). Returns {impl: {"points", "fixed_bytes", "bytes_per_neuron"}}
    with "seconds_per_neuron" for eager, and "model_bytes_per_neuron".
    """
    from ..bench import budget, memory
    from ..bench.cases import Case

    d, c = task.data.x_train.shape[1], task.out_features
    n_batch, n_test = min(cfg.batch_size, task.data.x_train.shape[0]), task.data.x_test.shape[0]
    kinds = [FULL, *cfg.sweep_orders]
    out = {}
    # torch.compile recompiles for every shape: the compiled reference is measured at the widest
    # reference width only and scaled in proportion to m (an overestimate by its fixed overhead)
    for impl, widths in (("eager", cfg.reference_widths), ("compiled", cfg.reference_widths[-1:])):
        points = []
        for width in widths:
            peak = 0.0
            for order in kinds:
                for op, n in (("net_fb", n_batch), ("net", n_test)):
                    bar.set_description(f"{NAME}: {impl} reference memory, m={width}, order {order}, {op}")
                    case = Case(op, n, d, width, order, cfg.activation, "float32", device.type, outputs=c)
                    r = memory.measure_subprocess(case, impl, threads=torch.get_num_threads(), compile_mode=None)
                    if r.get("peak_bytes") is None:
                        raise RuntimeError(f"{impl} reference memory at m={width}: {r.get('error', r.get('status'))}")
                    peak = max(peak, r["peak_bytes"])
                    bar.update(1)
            points.append((width, peak))
            bar.write(f"  {impl} reference at m={width}: peak {peak / 2**20:.1f} MiB (the largest of the sweep "
                      "models' training step and test-set pass)", file=sys.stderr)
        fixed, per_neuron = budget.fit_affine(points)
        out[impl] = {"points": points, "fixed_bytes": fixed, "bytes_per_neuron": per_neuron}
    # the models' own tensors: W0, W and its gradient (m x d each) and the readout (c x m), per model
    out["model_bytes_per_neuron"] = len(kinds) * (3 * d + c) * 4
    # eager time per step, all models, at the widest reference width
    from .. import reference
    width = max(cfg.reference_widths)
    torch.manual_seed(0)
    models = make_models(task, width, cfg.sweep_orders, cfg.activation, device)
    x, y = task.data.x_train[:n_batch], task.data.y_train[:n_batch]

    def step():
        for m in models.values():
            out_ = reference.taylor_net(x, m.weight0, m.weight, m.a, activation=m.activation, order=m.order,
                                        scale=m.scale)
            task.loss(out_ if c > 1 else out_.squeeze(-1), y).backward()
    bar.set_description(f"{NAME}: eager reference time, m={width}")
    step()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    out["eager"]["seconds_per_neuron"] = statistics.median(times) / width
    bar.write(f"  eager reference at m={width}: {out['eager']['seconds_per_neuron'] * width:.3f} s per sweep step",
              file=sys.stderr)
    return out


def reference_measurements(cfg: TaylorizedConfig) -> int:
    """How many fresh processes ``reference_costs`` runs: two ops for the network and each sweep
    order, at every reference width (eager) and at the widest (compiled)."""
    per_width = 2 * (1 + len(cfg.sweep_orders))
    return per_width * (len(cfg.reference_widths) + (1 if cfg.reference_widths else 0))


def out_of_memory_width(costs: dict, impl: str, budget_bytes: float) -> float:
    """The width at which the reference ``impl``'s predicted peak reaches the budget."""
    c = costs[impl]
    return (budget_bytes - c["fixed_bytes"]) / (c["bytes_per_neuron"] + costs["model_bytes_per_neuron"])


def _predicted_reference(costs: dict, width: int, budget_bytes: float) -> dict:
    """Predicted peak bytes of the references at ``width`` and whether they fit the budget. The
    affine fit only extrapolates upwards: below the narrowest measured width (where its intercept
    can make it negative) there is no prediction (NaN), and the reference fits."""
    row = {}
    for impl in ("eager", "compiled"):
        c = costs[impl]
        if width < min(m for m, _ in c["points"]):
            row[f"{impl}_predicted_bytes"], row[f"{impl}_fits"] = math.nan, True
            continue
        peak = c["fixed_bytes"] + (c["bytes_per_neuron"] + costs["model_bytes_per_neuron"]) * width
        row[f"{impl}_predicted_bytes"] = peak
        row[f"{impl}_fits"] = peak <= budget_bytes
    row["eager_predicted_seconds_per_step"] = costs["eager"]["seconds_per_neuron"] * width
    return row


def _strictly_decreasing(values) -> bool:
    return all(math.isfinite(v) for v in values) and all(a > b for a, b in zip(values, values[1:]))


def _chain(labels, values) -> str:
    """'1: 0.03 > 2: 0.01 <= 3: 0.02': the values with the comparison that holds between neighbours."""
    text = f"{labels[0]}: {values[0]:.3g}"
    for i in range(1, len(values)):
        text += f" {'>' if values[i - 1] > values[i] else '<='} {labels[i]}: {values[i]:.3g}"
    return text


def judge(final: dict, sweep: list[dict], orders, sweep_orders=(1, 2), tolerance: float = 0.1) -> tuple[Verdict, dict]:
    """The verdict from the final distances: per task, decreasing with the order; in the width
    sweep, the order-1 distance decreasing with the width at least as fast as the NTK theory's
    m^(-1/2) (log-log slope <= -1/2 + tolerance: the theory's O(m^(-1/2)) is an upper bound), and
    the order-2 model closer to the network than the order-1 model at every width. Returns the
    verdict and the summary numbers."""
    checks, parts = {}, []
    for task, by_order in final.items():
        dists = [by_order[str(k)] for k in orders]
        checks[f"{task}: distance decreases with the order"] = _strictly_decreasing(dists)
        parts.append(f"{task} distance to full net by order {_chain(list(orders), dists)}")
    summary = {"final_distance_to_full": final}
    if sweep:
        widths = [r["width"] for r in sweep]
        summary["width_sweep"] = {"widths": widths}
        for k in sweep_orders:
            dists = [r[f"distance_order{k}"] for r in sweep]
            slope, _ = fit_power_law(widths, dists)
            theory = -k / 2
            summary["width_sweep"][f"order{k}"] = {"distance_to_full": dists, "loglog_slope": slope,
                                                   "theory_slope": theory}
            parts.append(f"order-{k} distance by width {_chain(widths, dists)} (slope {slope:.2f} on log-log; "
                         f"NTK theory {theory:g})")
            if k == 1:
                checks["order-1 distance decreases with the width"] = _strictly_decreasing(dists)
                checks[f"order-1 slope <= -0.5 + {tolerance:g}"] = math.isfinite(slope) and slope <= -0.5 + tolerance
        if 1 in sweep_orders and 2 in sweep_orders:
            checks["order 2 closer than order 1 at every width"] = all(
                r["distance_order2"] < r["distance_order1"] for r in sweep)
        if "eager_fits" in sweep[0]:
            top = sweep[-1]
            for impl in ("eager", "compiled"):
                over = [r["width"] for r in sweep if not r[f"{impl}_fits"]]
                parts.append(f"{impl} reference: " + (f"predicted out of memory from m = {over[0]}" if over
                                                      else f"predicted to fit up to m = {top['width']}")
                             + f" ({top[f'{impl}_predicted_bytes'] / 2**30:.1f} GiB there)")
            parts.append(f"at m = {top['width']} the eager step is predicted to take "
                         f"{top['eager_predicted_seconds_per_step']:.2f} s, the fused one took "
                         f"{top['seconds_per_step']:.2f} s")
    failed = [name for name, ok in checks.items() if not ok]
    reason = "; ".join(parts) + (f". Failed: {', '.join(failed)}" if failed else "")
    summary["checks"] = checks
    return Verdict.from_checks(checks, reason), summary


def plot(eval_rows: list[dict], train_rows: list[dict], tasks: list[Task], orders, results):
    """taylorized.png: loss, test metric, 1 - cosine per task (like Figure 1 of Bai et al. 2020);
    taylorized_distances.png: relative distance and ||W|| over training."""
    plt = pyplot()
    labels = [FULL, *orders]
    shown = sorted(set(orders) | {1})  # order 1 also appears in the distance-from-init panel
    colors = {FULL: "black", **{k: plt.cm.viridis(i / max(1, len(shown) - 1) * 0.85) for i, k in enumerate(shown)}}
    names = {FULL: "full network", **{k: f"order {k}" for k in shown}}

    def series(rows, task, label, key):
        pts = [(r["step"], r[key]) for r in rows if r["task"] == task and r["model"] == str(label)]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(len(tasks), 3, figsize=(14, 3.6 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        for label in labels:
            style = {"color": colors[label], "label": names[label], "lw": 2.2 if label == FULL else 1.4}
            row[0].plot(*series(train_rows, task.name, label, "train_loss"), **style, alpha=0.8)
            row[1].plot(*series(eval_rows, task.name, label, "test_metric"), **style)
            if label != FULL:
                steps, cos = series(eval_rows, task.name, label, "cosine_to_full")
                row[2].plot(steps, [max(1 - c, 1e-12) for c in cos], **style)
        row[0].set(yscale="log", ylabel=f"{task.name}: train loss", xlabel="step")
        row[1].set(ylabel=task.metric_name, xlabel="step")
        if task.out_features == 1:
            row[1].set_yscale("log")
        row[2].set(yscale="log", ylabel="1 - cosine similarity to full net", xlabel="step")
        row[0].legend(fontsize=8)
    fig.suptitle("Taylorized training: the full network and its Taylor models, same init, SGD, learning rate")
    fig.tight_layout()
    results.figure(fig, NAME)

    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(4.6 * (len(tasks) + 1), 3.6))
    for ax, task in zip(axes, tasks):
        for label in orders:
            ax.plot(*series(eval_rows, task.name, label, "distance_to_full"), color=colors[label], label=names[label])
        ax.set(yscale="log", xlabel="step", ylabel="||f_k - f|| / ||f|| on test", title=task.name)
        ax.legend(fontsize=8)
    ax = axes[len(tasks)]
    for task in tasks:
        for label in (FULL, 1):
            ax.plot(*series(train_rows, task.name, label, "weight_distance"), color=colors[label],
                    ls="-" if task is tasks[0] else "--", label=f"{task.name}, {names[label]}")
    ax.set(xlabel="step", ylabel="||W - W_init||_F", title="distance from init")
    ax.legend(fontsize=8)
    fig.tight_layout()
    results.figure(fig, f"{NAME}_distances")


def plot_sweep(sweep: list[dict], summary: dict, cfg: TaylorizedConfig, task: Task, budget_bytes: float, results):
    """taylorized_width_sweep.png: the order-k distances to the full network against m with their
    fitted slopes and the theory's m^(-k/2); the fused ops' measured peak memory against the
    references' predicted peaks and the memory budget."""
    plt = pyplot()
    widths = [r["width"] for r in sweep]
    fig, (ax, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.4))
    for i, k in enumerate(cfg.sweep_orders):
        color = plt.cm.viridis(i / max(1, len(cfg.sweep_orders)) * 0.85)
        dists = [r[f"distance_order{k}"] for r in sweep]
        fit = summary["width_sweep"][f"order{k}"]
        ax.plot(widths, dists, "o-", color=color, label=f"order {k}: slope {fit['loglog_slope']:.2f}")
        ax.plot(widths, [dists[0] * (w / widths[0]) ** fit["theory_slope"] for w in widths], ":", color=color,
                label=f"m^{fit['theory_slope']:g} (NTK theory)")
    ax.set(xscale="log", yscale="log", xlabel="width m", ylabel="||f_k - f|| / ||f|| on test",
           title=f"{task.name}: distance to the full network after {cfg.sweep_steps} steps, fixed lr")
    ax.legend(fontsize=8)
    gib = 2.0**30
    fused = [(r["width"], r["fused_peak_bytes"] / gib) for r in sweep if r.get("fused_peak_bytes")]
    if fused:
        ax_mem.plot(*zip(*fused), "o-", color="black", label="taylornet (fused), measured")
    for impl, style in (("eager", "s--"), ("compiled", "D--")):
        key = f"{impl}_predicted_bytes"
        if sweep and key in sweep[0]:
            ax_mem.plot(widths, [r[key] / gib for r in sweep], style, mfc="none", label=f"{impl} reference, predicted")
    if math.isfinite(budget_bytes):
        ax_mem.axhline(budget_bytes / gib, color="red", lw=0.8, label=f"memory budget {budget_bytes / gib:.1f} GiB")
    ax_mem.set(xscale="log", yscale="log", xlabel="width m", ylabel="peak memory of the sweep step (GiB)",
               title=f"batch {cfg.batch_size}, {len(cfg.sweep_orders) + 1} models")
    ax_mem.legend(fontsize=8)
    for a in (ax, ax_mem):
        a.set_xticks(widths, [f"2^{int(math.log2(w))}" if w & (w - 1) == 0 else str(w) for w in widths])
        a.xaxis.set_minor_locator(plt.NullLocator())
    fig.tight_layout()
    results.figure(fig, f"{NAME}_width_sweep")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, NAME)
    g = p.add_argument_group("experiment knobs (override the preset; defaults without one)")
    g.add_argument("--width", type=int, help="neurons m of every model (default 4096, quick 2048)")
    g.add_argument("--orders", type=int, nargs="+", help="Taylor orders compared with the full network (1 2 3 4)")
    g.add_argument("--activation", help="activation (default softplus)")
    g.add_argument("--steps", type=int, help="SGD steps of the comparison at --width (default 1000, quick 400; "
                                             "0: only the width sweep)")
    g.add_argument("--batch-size", type=int, help="SGD batch size (default 128)")
    g.add_argument("--lr", type=float, help="learning rate on digits (default 5)")
    g.add_argument("--synthetic-lr", type=float, help="learning rate on the synthetic task (default 2)")
    g.add_argument("--eval-every", type=int, help="steps between test evaluations (default 10)")
    g.add_argument("--tasks", nargs="+", choices=("digits", "synthetic"), help="tasks (default both)")
    g.add_argument("--sweep-widths", type=int, nargs="*",
                   help="widths of the width sweep on the first task, 2^8 .. 2^20 (quick 2^8 .. 2^14; "
                        "no value: skip the sweep)")
    g.add_argument("--sweep-steps", type=int, help="SGD steps of each width-sweep run (15; quick 100)")
    g.add_argument("--sweep-orders", type=int, nargs="+", help="Taylor orders trained in the width sweep (1 2)")
    g.add_argument("--reference-widths", type=int, nargs="*",
                   help="widths at which the eager and compiled references' memory and time are measured and "
                        "extrapolated to the sweep widths (2^10 2^12; no value: skip)")
    g.add_argument("--memory-budget-gib", type=float,
                   help="memory the references' predicted peaks are compared with (default: this machine's RAM)")
    g.add_argument("--tolerance", type=float,
                   help="slack on the order-1 slope check, slope <= -1/2 + tolerance (0.1)")
    g.add_argument("--synthetic-dim", type=int, help="input dimension d of the synthetic task (16)")
    g.add_argument("--synthetic-rank", type=int, help="rank r* of the synthetic target (2)")
    g.add_argument("--synthetic-degree", type=int, help="degree p of the synthetic target (2)")
    g.add_argument("--synthetic-train", type=int, help="synthetic training samples (1024)")
    g.add_argument("--synthetic-test", type=int, help="synthetic test samples (512)")


def run(args: argparse.Namespace) -> int:
    cfg, preset = resolve_config(TaylorizedConfig, PRESETS, args)
    device = setup(args)
    results = Results(NAME, args.out, cfg, preset, args)
    tasks = [make_task(name, cfg, args.seed, device) for name in cfg.tasks]
    bar = progress(len(tasks) * cfg.steps, f"{NAME} [{preset}]", "step", args)
    train_rows, eval_rows, sweep, done = [], [], [], []
    budget_bytes = _memory_budget(cfg)
    costs = None
    with Interruptible(lambda: bar.close()) as run:  # the bar current at the time
        for task in tasks if cfg.steps else []:  # --steps 0: the width sweep alone
            torch.manual_seed(args.seed)
            models = make_models(task, cfg.width, cfg.orders, cfg.activation, device)
            bar.set_description(f"{NAME}: {task.name}, m={cfg.width}")
            train_together(task, models, cfg.steps, cfg.batch_size, cfg.eval_every, args.seed, bar,
                           train_rows, eval_rows)
            done.append(task)
            del models
        bar.close()
        bar = progress(sum(cfg.sweep_widths) * cfg.sweep_steps, f"{NAME}: width sweep", "neuron-step", args,
                       unit_scale=True)
        if cfg.sweep_widths:
            if cfg.reference_widths:
                ref_bar = progress(reference_measurements(cfg), f"{NAME}: reference memory", "process", args)
                try:
                    costs = reference_costs(tasks[0], cfg, device, ref_bar)
                finally:
                    ref_bar.close()
            write = results.stream(f"{NAME}_width_sweep", _sweep_fields(cfg, costs))

            def on_row(row):
                if costs:
                    row.update(_predicted_reference(costs, row["width"], budget_bytes))
                write(row)
            width_sweep(tasks[0], cfg, args.seed, device, bar, sweep, on_row)
    if run.stopped:
        print(f"interrupted: keeping {len(done)} finished task(s) and {len(sweep)} sweep width(s)", file=sys.stderr)

    results.table(f"{NAME}_train", train_rows)
    results.table(f"{NAME}_eval", eval_rows)

    def final(key):  # {task: {model: value at the last step}}, finished tasks only
        return {task.name: {r["model"]: r[key] for r in eval_rows if r["task"] == task.name and r["step"] == cfg.steps}
                for task in done}

    verdict, summary = judge(final("distance_to_full"), sweep, cfg.orders, cfg.sweep_orders, cfg.tolerance)
    summary["final_test_metric"] = final("test_metric")
    summary["final_cosine_to_full"] = final("cosine_to_full")
    if costs:
        summary["reference_costs"] = {"budget_bytes": budget_bytes, **costs, "out_of_memory_width": {
            impl: out_of_memory_width(costs, impl, budget_bytes) for impl in ("eager", "compiled")}}
    run.mark(verdict, summary)
    if done:
        plot(eval_rows, train_rows, done, cfg.orders, results)
    if sweep:
        plot_sweep(sweep, summary, cfg, tasks[0], budget_bytes, results)
        print(_sweep_table(sweep, cfg))
    results.finish(summary, verdict)
    return run.exit_code


def _sweep_fields(cfg: TaylorizedConfig, costs) -> list[str]:
    fields = ["width"]
    for k in cfg.sweep_orders:
        fields += [f"distance_order{k}", f"cosine_order{k}"]
    fields += ["seconds_per_step", "fused_peak_bytes"]
    if costs:
        fields += ["eager_predicted_bytes", "eager_fits", "compiled_predicted_bytes", "compiled_fits",
                   "eager_predicted_seconds_per_step"]
    return fields


def _sweep_table(sweep: list[dict], cfg: TaylorizedConfig) -> str:
    """The width sweep as text: distances, fused time and memory, the references' predictions."""
    gib = 2.0**30
    head = f"{'m':>8}" + "".join(f"{'order ' + str(k):>10}" for k in cfg.sweep_orders)
    head += f"{'s/step':>9}{'fused GiB':>11}"
    refs = "eager_predicted_bytes" in sweep[0]
    if refs:
        head += f"{'eager GiB':>14}{'compiled GiB':>16}{'eager s/step':>14}"
    lines = [f"width sweep (distance to the full network after {cfg.sweep_steps} steps):", head]
    for r in sweep:
        line = f"{r['width']:>8}" + "".join(f"{r[f'distance_order{k}']:>10.4g}" for k in cfg.sweep_orders)
        peak = r.get("fused_peak_bytes")
        line += f"{r['seconds_per_step']:>9.3f}" + (f"{peak / gib:>11.2f}" if peak else f"{'-':>11}")
        if refs:
            for impl, width in (("eager", 14), ("compiled", 16)):
                predicted = r[f"{impl}_predicted_bytes"]
                cell = ("-" if not math.isfinite(predicted) else f"{predicted / gib:.2f}") + (
                    "" if r[f"{impl}_fits"] else " OOM")
                line += f"{cell:>{width}}"
            line += f"{r['eager_predicted_seconds_per_step']:>14.2f}"
        lines.append(line)
    return "\n".join(lines)
