"""Sample complexity of the NTK vs the quadratic Taylor model on low-rank polynomials (Bai and Lee 2020,
"Beyond Linearization", arXiv:1910.01619).

Targets f*(x) = sum_{s <= r*} alpha_s (beta_s.x)^p (centered, unit variance) with orthonormal beta_s and
x uniform on the sphere of radius sqrt(d). For each input dimension d and each learner, the training
set size n grows on a geometric grid until the normalized test error MSE / Var(y) falls to the target;
n*(d) is interpolated on log n between the last miss and the first hit. The exponent of n* in d is
the slope of a least-squares line on log-log axes. The claim: the NTK needs about d^p samples, the
quadratic model (sign randomization, noisy SGD, weight decay) about d^(p-1).

Learners (see ``taylornet.experiments.learners``): ntk-krr, ntk-gd, quadratic-signs,
quadratic-expected, full. The full network carries no claim here; it is shown for comparison.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .common import Results, Verdict, add_common_arguments, fit_power_law, progress, pyplot, resolve_config, setup
from .data import LowRankPolynomial, sample_sphere
from .learners import LEARNERS, LearnerSettings, fit_predict

__all__ = [
    "SampleComplexityConfig", "PRESETS", "sample_grid", "find_threshold", "sweep", "predicted_exponents",
    "judge", "plot", "add_sweep_arguments", "add_arguments", "run",
]

NAME = "sample-complexity"
PLATEAU = 0.95  # a new best test error must be below PLATEAU * the best so far


@dataclass
class SampleComplexityConfig:
    dims: tuple[int, ...] = (8, 12, 16, 24, 32)
    degree: int = 2
    rank: int = 1
    learners: tuple[str, ...] = ("ntk-krr", "ntk-gd", "quadratic-signs", "quadratic-expected", "full")
    target_error: float = 0.5
    test_samples: int = 2000
    max_samples: int = 4096
    grid_ratio: float = 2**0.5
    tolerance: float = 0.5
    repeats: int = 3
    patience: int = 3
    width: int = 4096
    activation: str = "softplus"
    ridge: float = 1e-3
    steps: int = 600
    lr: float = 3.0
    noise_std: float = 1e-3
    weight_decay: float = 1e-4
    lbfgs_iters: int = 200


PRESETS = {
    "quick": dict(dims=(8, 12, 16, 24), width=2048, steps=600, test_samples=1000, max_samples=1024, lbfgs_iters=100),
    "large": dict(dims=(16, 24, 32, 48, 64), width=2**20, steps=2000, test_samples=4000, max_samples=8192),
}


def learner_settings(cfg, **overrides) -> LearnerSettings:
    """The LearnerSettings fields present in ``cfg``, plus ``overrides`` (the seed is set per draw)."""
    names = {f.name for f in dataclasses.fields(LearnerSettings)}
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k in names}
    return LearnerSettings(**{**values, **overrides})


def sample_grid(ratio: float, max_n: int, start: int = 4) -> list[int]:
    """Distinct training-set sizes start, start * ratio, ... (rounded) up to max_n."""
    grid, k = [], 0
    while (n := round(start * ratio**k)) <= max_n:
        if not grid or n > grid[-1]:
            grid.append(n)
        k += 1
    return grid


def find_threshold(error_at: Callable[[int], float], grid: list[int], start: int, target: float,
                   patience: int = 3):
    """The smallest n reaching ``target`` test error, interpolated between grid points.

    Walks up the grid from index ``start`` to the first hit (error <= target), then down while the
    point below is a hit too, so ``start`` only needs to be a guess. Once the learner is halfway from
    the zero predictor (error 1) to the target, the walk up gives up after ``patience`` points in a
    row that do not improve the best error by 5%: the learner has plateaued above the target. (Before
    that, errors may stall or even rise with n, towards a kernel's interpolation peak, say, without
    meaning a plateau.)
    Returns (n*, index of the first hit or None): n* is interpolated linearly in log n between the
    last miss and the first hit; it is the first grid point when that already hits, and NaN when no
    grid point does.
    """
    errors = {}

    def err(i):
        if i not in errors:
            errors[i] = error_at(grid[i])
        return errors[i]

    i = min(start, len(grid) - 1)
    best, since_best = math.inf, 0
    while i < len(grid) and not err(i) <= target:
        best, since_best = (err(i), 0) if err(i) < PLATEAU * best else (best, since_best + 1)
        if best <= (1 + target) / 2 and since_best >= patience:
            return math.nan, None
        i += 1
    if i == len(grid):
        return math.nan, None
    while i > 0 and err(i - 1) <= target:
        i -= 1
    if i == 0:
        return float(grid[0]), 0
    miss, hit = err(i - 1), err(i)
    if not math.isfinite(miss):
        return float(grid[i]), i
    frac = (miss - target) / (miss - hit)
    return math.exp(math.log(grid[i - 1]) + frac * (math.log(grid[i]) - math.log(grid[i - 1]))), i


def _problem(cfg, d: int, draw: int, device):
    """Training pool, test set and targets for dimension d from seed ``draw`` (the first n pool
    points train)."""
    g = torch.Generator().manual_seed(draw)
    target = LowRankPolynomial.random(d, cfg.rank, cfg.degree, g)
    x_pool = sample_sphere(cfg.max_samples, d, g)
    x_test = sample_sphere(cfg.test_samples, d, g)
    return (x_pool.to(device), target(x_pool).to(device), x_test.to(device), target(x_test).to(device))


def sweep(cfg, seed: int, device, settings_for: Callable[[int], LearnerSettings], bar):
    """Runs the threshold search for every learner and d.

    The test error at (d, n) is the mean over ``cfg.repeats`` independent draws of the target, the
    data and the initialization. Returns (rows of every evaluation, {learner: {d: n*}}).
    """
    grid = sample_grid(cfg.grid_ratio, cfg.max_samples)
    rows, thresholds = [], {name: {} for name in cfg.learners}
    starts = {name: 0 for name in cfg.learners}
    for d in cfg.dims:
        draws = [seed * 1_000_000 + repeat * 1_000 + d for repeat in range(cfg.repeats)]
        problems = [_problem(cfg, d, draw, device) for draw in draws]
        settings = [dataclasses.replace(settings_for(d), seed=draw) for draw in draws]
        for name in cfg.learners:
            def error_at(n, name=name):
                t = time.perf_counter()
                errors = []
                for (x_pool, y_pool, x_test, y_test), s in zip(problems, settings):
                    pred = fit_predict(name, x_pool[:n], y_pool[:n], x_test, s)
                    errors.append(((pred - y_test).pow(2).mean() / y_test.var()).item())
                error = sum(errors) / len(errors)
                rows.append({"learner": name, "d": d, "n": n, "test_error": error,
                             "test_error_min": min(errors), "test_error_max": max(errors),
                             "seconds": round(time.perf_counter() - t, 3)})
                bar.set_postfix_str(f"{name} d={d} n={n} err={error:.3f}")
                return error

            n_star, hit = find_threshold(error_at, grid, starts[name], cfg.target_error, cfg.patience)
            thresholds[name][d] = n_star
            if hit is not None:
                starts[name] = max(0, hit - 1)
            bar.update(1)
    return rows, thresholds


def predicted_exponents(learners, degree: int) -> dict[str, float]:
    """The claimed exponent of n* in d: p for the NTK, p - 1 for the quadratic model, p / 2 for the
    hierarchical learner; the full network carries no claim."""
    claims = {"ntk-krr": degree, "ntk-gd": degree, "quadratic-signs": degree - 1,
              "quadratic-expected": degree - 1, "hierarchical": degree / 2}
    return {name: claims[name] for name in learners if name in claims}


def judge(thresholds: dict, predicted: dict, tolerance: float, target_error: float):
    """Fits the exponents; the claim holds for a learner when its exponent is within ``tolerance``
    of the prediction. Returns (verdict, summary)."""
    exponents, checks, parts = {}, {}, []
    for name, by_d in thresholds.items():
        dims = sorted(by_d)
        slope, intercept = fit_power_law(dims, [by_d[d] for d in dims])
        exponents[name] = {"exponent": slope, "intercept": intercept,
                           "dims_reached": [d for d in dims if math.isfinite(by_d[d])]}
        claim = predicted.get(name)
        text = f"{name} {slope:.2f}" + (f" (claim {claim:g})" if claim is not None else "")
        if claim is not None:
            checks[name] = math.isfinite(slope) and abs(slope - claim) <= tolerance
        parts.append(text)
    failed = [name for name, ok in checks.items() if not ok]
    reason = (f"exponent of n* (test error <= {target_error}) in d: " + ", ".join(parts)
              + f"; tolerance {tolerance}" + (f". Off the claim: {', '.join(failed)}" if failed else ""))
    summary = {"n_star": thresholds, "exponents": exponents, "predicted": predicted, "checks": checks}
    return Verdict.from_checks(checks, reason), summary


def plot(rows, thresholds, summary, cfg, title: str, results, stem: str):
    """Left: n* against d on log-log axes with the fitted exponents (a hollow triangle at the largest
    n tried where the target was not reached); right: test error against n."""
    plt = pyplot()
    from matplotlib.ticker import LogLocator, ScalarFormatter

    colors = {name: plt.cm.tab10(i) for i, name in enumerate(LEARNERS)}
    markers = dict(zip(LEARNERS, "osDv^P"))
    fig, (ax, ax_err) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, by_d in thresholds.items():
        dims = [d for d in sorted(by_d) if math.isfinite(by_d[d])]
        fit = summary["exponents"][name]
        label = f"{name}: {fit['exponent']:.2f}"
        if name in summary["predicted"]:
            label += f" (claim {summary['predicted'][name]:g})"
        ax.plot(dims, [by_d[d] for d in dims], markers[name], color=colors[name], label=label, mfc="none", ms=8)
        if math.isfinite(fit["exponent"]):
            ds = [min(cfg.dims), max(cfg.dims)]
            ax.plot(ds, [math.exp(fit["intercept"]) * d ** fit["exponent"] for d in ds], "-", color=colors[name],
                    alpha=0.7)
        missed = [d for d in sorted(by_d) if not math.isfinite(by_d[d])]
        largest = [max(r["n"] for r in rows if r["learner"] == name and r["d"] == d) for d in missed]
        ax.plot(missed, largest, "^", color=colors[name], mfc="none", ms=10,
                label=f"{name}: not reached up to this n" if missed else None)
    ax.set(xscale="log", yscale="log", xlabel="input dimension d",
           ylabel=f"n* (samples to test error {cfg.target_error})",
           title=f"{title}: fitted exponents of n* ~ d^k")
    ax.set_xticks(list(cfg.dims), [str(d) for d in cfg.dims])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    for axis in (ax.yaxis, ax_err.yaxis):
        axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_locator(plt.NullLocator())
    ax.legend(fontsize=8)
    styles = ["-", "--", ":", "-.", (0, (1, 3)), (0, (5, 1))]
    for name in thresholds:
        for j, d in enumerate(cfg.dims):
            pts = sorted((r["n"], r["test_error"]) for r in rows if r["learner"] == name and r["d"] == d)
            ax_err.plot([p[0] for p in pts], [min(p[1], 10.0) for p in pts], marker=".", color=colors[name],
                        ls=styles[j % len(styles)], label=name if j == 0 else None)
    for j, d in enumerate(cfg.dims):
        ax_err.plot([], [], color="gray", ls=styles[j % len(styles)], label=f"d = {d}")
    ax_err.axhline(cfg.target_error, color="gray", lw=0.8)
    ax_err.set(xscale="log", yscale="log", xlabel="training samples n", ylabel="test error MSE / Var(y)",
               title=f"evaluated points (mean of {cfg.repeats} draws; line: one learner, one d)")
    ax_err.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    results.figure(fig, stem)


def add_sweep_arguments(g, defaults, learners=tuple(LEARNERS)) -> None:
    """Knobs common to the sample-complexity and hierarchical experiments; help shows ``defaults``
    (the experiment's config without a preset), --learners offers ``learners``."""
    c = defaults
    g.add_argument("--dims", type=int, nargs="+", help=f"input dimensions d {c.dims}")
    g.add_argument("--degree", type=int, help=f"degree p of the target ({c.degree})")
    g.add_argument("--rank", type=int, help=f"rank r* of the target, its number of directions ({c.rank})")
    g.add_argument("--learners", nargs="+", choices=learners, help=f"learners to compare {c.learners}")
    g.add_argument("--target-error", type=float, help=f"test error MSE / Var(y) that defines n* ({c.target_error})")
    g.add_argument("--test-samples", type=int, help=f"test samples per d ({c.test_samples})")
    g.add_argument("--max-samples", type=int, help=f"largest training set tried ({c.max_samples})")
    g.add_argument("--grid-ratio", type=float, help=f"ratio of consecutive training-set sizes ({c.grid_ratio:.3g})")
    g.add_argument("--repeats", type=int, help=f"independent draws averaged at every (d, n) ({c.repeats})")
    g.add_argument("--patience", type=int,
                   help=f"grid points without a 5%% better error before giving up on a learner ({c.patience})")
    g.add_argument("--tolerance", type=float,
                   help=f"largest |fitted - claimed exponent| that counts as held ({c.tolerance})")
    g.add_argument("--width", type=int, help=f"neurons m of every two-layer model ({c.width})")
    g.add_argument("--activation", help=f"activation ({c.activation}: its sigma'' > 0 and its NTK has even "
                                        "and odd harmonics)")
    g.add_argument("--ridge", type=float, help=f"NTK ridge relative to the Gram's mean diagonal ({c.ridge})")
    g.add_argument("--steps", type=int, help=f"noisy SGD steps, full batch ({c.steps})")
    g.add_argument("--lr", type=float, help=f"noisy SGD learning rate ({c.lr}); capped at the NTK stability "
                                            "limit for full and quadratic-signs")
    g.add_argument("--noise-std", type=float, help=f"NoisySGD gradient noise ({c.noise_std})")
    g.add_argument("--weight-decay", type=float, help=f"weight decay, the nuclear-norm regularizer ({c.weight_decay})")
    g.add_argument("--lbfgs-iters", type=int, help=f"L-BFGS iterations of ntk-gd ({c.lbfgs_iters})")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, NAME)
    add_sweep_arguments(p.add_argument_group("experiment knobs (override the preset; defaults without one)"),
                        SampleComplexityConfig(), tuple(k for k in LEARNERS if k != "hierarchical"))


def run_experiment(name: str, cfg, preset: str, args, settings_for, title: str) -> int:
    """Sweep, tables, figure, verdict: the body shared with the hierarchical experiment."""
    device = setup(args)
    results = Results(name, args.out, cfg, preset, args)
    bar = progress(len(cfg.dims) * len(cfg.learners), f"{name} [{preset}]", "search", args)
    rows, thresholds = sweep(cfg, args.seed, device, settings_for, bar)
    bar.close()
    results.table(f"{name}_runs", rows)
    results.table(f"{name}_thresholds", [{"learner": k, "d": d, "n_star": n} for k, by_d in thresholds.items()
                                         for d, n in by_d.items()])
    verdict, summary = judge(thresholds, predicted_exponents(cfg.learners, cfg.degree), cfg.tolerance,
                             cfg.target_error)
    plot(rows, thresholds, summary, cfg, title, results, name.replace("-", "_"))
    results.finish(summary, verdict)
    return 0


def run(args: argparse.Namespace) -> int:
    cfg, preset = resolve_config(SampleComplexityConfig, PRESETS, args)
    return run_experiment(NAME, cfg, preset, args, lambda d: learner_settings(cfg),
                          f"NTK vs quadratic model, p = {cfg.degree}")
