"""Taylorized training (Bai, Krause, Wang, Xiong and Socher 2020, arXiv:2002.04010, its Figure 1).

The full network f = scale * sum_r a_r sigma(w0_r.x + w_r.x) (order "exact") and its Taylor models of
orders 1..K in the movement W start from the same initialization and train with the same SGD, learning
rate and batches. At a practical, large learning rate W moves far from the initialization, and the
claim is that the Taylor models track the full network better as the order grows, the linearized
(NTK) model being the worst; and that at a fixed learning rate the linearized model approaches the
full network as the width grows (the NTK regime).

Tasks: the scikit-learn digits (10 classes, cross-entropy on the logits, test accuracy) and a
synthetic regression on a low-rank polynomial of x on the sphere (mean squared error, test error
normalized by the target variance). Only W trains (the readout stays fixed), as in the theory.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..modules import TaylorNet
from .common import Results, Verdict, add_common_arguments, fit_power_law, progress, pyplot, resolve_config, setup
from .data import LowRankPolynomial, Split, load_digits, sample_sphere

__all__ = ["TaylorizedConfig", "PRESETS", "Task", "make_task", "make_models", "train_together",
           "compare_outputs", "width_sweep", "judge", "add_arguments", "run"]

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
    sweep_widths: tuple[int, ...] = (256, 1024, 4096, 16384)
    sweep_steps: int = 1000
    synthetic_dim: int = 16
    synthetic_rank: int = 2
    synthetic_degree: int = 2
    synthetic_train: int = 1024
    synthetic_test: int = 512


PRESETS = {
    "quick": dict(width=2048, steps=400, sweep_widths=(256, 512, 1024, 2048, 4096), sweep_steps=400),
    "large": dict(width=2**20, steps=2000, batch_size=256, eval_every=20,
                  sweep_widths=(2**12, 2**14, 2**16, 2**18, 2**20), sweep_steps=2000),
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
                   bar) -> tuple[list[dict], list[dict]]:
    """Trains every model with SGD on the same batches; returns (per-step rows, evaluation rows).

    Per step: the training loss of the batch and ||W - W_init||_F of every model. Every
    ``eval_every`` steps (and at the first and last): the test metric and the cosine similarity and
    relative distance of each model's test outputs to the full network's.
    """
    data = task.data
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=task.lr) for k, m in models.items()}
    batches = _batches(data.x_train.shape[0], min(batch_size, data.x_train.shape[0]),
                       torch.Generator().manual_seed(seed))
    train_rows, eval_rows = [], []
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            eval_rows += _evaluate(task, models, step)
        if step == steps:
            break
        idx = next(batches).to(data.x_train.device)
        x, y = data.x_train[idx], data.y_train[idx]
        for label, model in models.items():
            loss = task.loss(task.outputs(model, x), y)
            optimizers[label].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[label].step()
            train_rows.append({"task": task.name, "step": step + 1, "model": str(label),
                               "train_loss": loss.item(), "weight_distance": model.weight.detach().norm().item()})
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


def width_sweep(task: Task, cfg: TaylorizedConfig, seed: int, device, bar) -> list[dict]:
    """Final cosine / relative distance of the order-1 model to the full network for each width."""
    rows = []
    for width in cfg.sweep_widths:
        torch.manual_seed(seed)
        models = make_models(task, width, (1,), cfg.activation, device)
        _, evals = train_together(task, models, cfg.sweep_steps, cfg.batch_size, cfg.sweep_steps, seed, bar)
        final = next(r for r in evals if r["step"] == cfg.sweep_steps and r["model"] == "1")
        rows.append({"width": width, "cosine_to_full": final["cosine_to_full"],
                     "distance_to_full": final["distance_to_full"]})
    return rows


def _strictly_decreasing(values) -> bool:
    return all(math.isfinite(v) for v in values) and all(a > b for a, b in zip(values, values[1:]))


def _chain(labels, values) -> str:
    """'1: 0.03 > 2: 0.01 <= 3: 0.02': the values with the comparison that holds between neighbours."""
    text = f"{labels[0]}: {values[0]:.3g}"
    for i in range(1, len(values)):
        text += f" {'>' if values[i - 1] > values[i] else '<='} {labels[i]}: {values[i]:.3g}"
    return text


def judge(final: dict, sweep: list[dict], orders) -> tuple[Verdict, dict]:
    """The verdict from the final distances: per task, decreasing with the order; order 1 decreasing
    with the width. Returns the verdict and the summary numbers."""
    checks, parts = {}, []
    for task, by_order in final.items():
        dists = [by_order[str(k)] for k in orders]
        checks[f"{task}: distance decreases with the order"] = _strictly_decreasing(dists)
        parts.append(f"{task} distance to full net by order {_chain(list(orders), dists)}")
    summary = {"final_distance_to_full": final}
    if sweep:
        widths = [r["width"] for r in sweep]
        dists = [r["distance_to_full"] for r in sweep]
        slope, _ = fit_power_law(widths, dists)
        checks["order-1 distance decreases with the width"] = _strictly_decreasing(dists)
        parts.append(f"order-1 distance by width {_chain(widths, dists)} (slope {slope:.2f} on log-log; "
                     "NTK theory -0.5)")
        summary["width_sweep"] = {"widths": widths, "distance_to_full": dists, "loglog_slope": slope}
    failed = [name for name, ok in checks.items() if not ok]
    reason = "; ".join(parts) + (f". Failed: {', '.join(failed)}" if failed else "")
    summary["checks"] = checks
    return Verdict.from_checks(checks, reason), summary


def plot(eval_rows: list[dict], train_rows: list[dict], sweep: list[dict], tasks: list[Task], orders, results):
    """taylorized.png: loss, test metric, 1 - cosine per task (like Figure 1 of Bai et al. 2020);
    taylorized_distances.png: relative distance and ||W|| over training, and the width sweep."""
    plt = pyplot()
    labels = [FULL, *orders]
    shown = sorted(set(orders) | {1})  # order 1 also appears in the width sweep
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

    fig, axes = plt.subplots(1, len(tasks) + 2, figsize=(4.6 * (len(tasks) + 2), 3.6))
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
    ax = axes[-1]
    if sweep:
        widths = [r["width"] for r in sweep]
        dists = [r["distance_to_full"] for r in sweep]
        ax.plot(widths, dists, "o-", color=colors[1], label="order 1 (final)")
        ax.plot(widths, [dists[0] * (w / widths[0]) ** -0.5 for w in widths], ":", color="gray", label="m^-1/2")
        ax.set(xscale="log", yscale="log", xlabel="width m", ylabel="||f_1 - f|| / ||f|| on test",
               title=f"{tasks[0].name}: width sweep at fixed lr")
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.legend(fontsize=8)
    fig.tight_layout()
    results.figure(fig, f"{NAME}_distances")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, NAME)
    g = p.add_argument_group("experiment knobs (override the preset; defaults without one)")
    g.add_argument("--width", type=int, help="neurons m of every model (default 4096, quick 2048)")
    g.add_argument("--orders", type=int, nargs="+", help="Taylor orders compared with the full network (1 2 3 4)")
    g.add_argument("--activation", help="activation (default softplus)")
    g.add_argument("--steps", type=int, help="SGD steps (default 1000, quick 400)")
    g.add_argument("--batch-size", type=int, help="SGD batch size (default 128)")
    g.add_argument("--lr", type=float, help="learning rate on digits (default 5)")
    g.add_argument("--synthetic-lr", type=float, help="learning rate on the synthetic task (default 2)")
    g.add_argument("--eval-every", type=int, help="steps between test evaluations (default 10)")
    g.add_argument("--tasks", nargs="+", choices=("digits", "synthetic"), help="tasks (default both)")
    g.add_argument("--sweep-widths", type=int, nargs="*",
                   help="widths of the order-1 width sweep on the first task, 256 .. 16384 "
                        "(no value: skip the sweep)")
    g.add_argument("--sweep-steps", type=int, help="SGD steps of each width-sweep run (1000, quick 400)")
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
    sweep_runs = len(cfg.sweep_widths) * cfg.sweep_steps
    bar = progress(len(tasks) * cfg.steps + sweep_runs, f"{NAME} [{preset}]", "step", args)
    train_rows, eval_rows = [], []
    for task in tasks:
        torch.manual_seed(args.seed)
        models = make_models(task, cfg.width, cfg.orders, cfg.activation, device)
        bar.set_description(f"{NAME}: {task.name}, m={cfg.width}")
        t_rows, e_rows = train_together(task, models, cfg.steps, cfg.batch_size, cfg.eval_every, args.seed, bar)
        train_rows += t_rows
        eval_rows += e_rows
    sweep = []
    if cfg.sweep_widths:
        bar.set_description(f"{NAME}: width sweep on {tasks[0].name}")
        sweep = width_sweep(tasks[0], cfg, args.seed, device, bar)
    bar.close()

    results.table(f"{NAME}_train", train_rows)
    results.table(f"{NAME}_eval", eval_rows)
    if sweep:
        results.table(f"{NAME}_width_sweep", sweep)
    def final(key):  # {task: {model: value at the last step}}
        return {task.name: {r["model"]: r[key] for r in eval_rows if r["task"] == task.name and r["step"] == cfg.steps}
                for task in tasks}

    verdict, summary = judge(final("distance_to_full"), sweep, cfg.orders)
    summary["final_test_metric"] = final("test_metric")
    summary["final_cosine_to_full"] = final("cosine_to_full")
    plot(eval_rows, train_rows, sweep, tasks, cfg.orders, results)
    results.finish(summary, verdict)
    return 0

