"""Sample complexity of the NTK vs the quadratic Taylor model on low-rank polynomials (Bai and Lee 2020,
"Beyond Linearization", arXiv:1910.01619).

Targets f*(x) = sum_{s <= r*} alpha_s (beta_s.x)^p (centered, unit variance) with orthonormal beta_s and
x uniform on the sphere of radius sqrt(d). For each input dimension d and each learner, the training
set size n grows on a geometric grid until the normalized test error MSE / Var(y) falls to the target;
n*(d) is interpolated on log n between the last miss and the first hit. The exponent of n* in d is
the slope of a least-squares line on log-log axes. The claim: the NTK needs about d^p samples, the
quadratic model (sign randomization, noisy SGD, weight decay) about d^(p-1). In the source papers
the NTK's d^p is a lower bound (any inner-product kernel needs that many samples) and the quadratic
model's d^(p-1) an upper bound, so the verdict checks them one-sidedly: the NTK's exponent at least
p - tolerance, the quadratic model's at most p - 1 + tolerance, and at the largest d the quadratic
model needing fewer samples than the NTK.

Learners (see ``taylornet.experiments.learners``): ntk-krr, ntk-gd, quadratic-signs,
quadratic-expected, full. The full network carries no claim here; it is shown for comparison.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

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
from .data import LowRankPolynomial, degree_shares, sample_sphere
from .learners import LEARNERS, LearnerSettings, fit, fit_steps

__all__ = [
    "SampleComplexityConfig", "PRESETS", "sample_grid", "find_threshold", "sweep", "CLAIMS", "claims_for",
    "harmonic_count", "judge", "plot", "add_sweep_arguments", "add_arguments", "run",
]

NAME = "sample-complexity"
PLATEAU = 0.95  # a new best test error must be below PLATEAU * the best so far


@dataclass
class SampleComplexityConfig:
    dims: tuple[int, ...] = (8, 12, 16, 24, 32)
    degree: int = 2
    rank: int = 1
    lower_share: float | str | None = None  # None or "monomial": (b.x)^p; else its variance share in degree p - 2
    learners: tuple[str, ...] = ("ntk-krr", "ntk-gd", "quadratic-signs", "quadratic-expected", "full")
    target_error: float = 0.5
    test_samples: int = 2000
    max_samples: int = 4096
    grid_ratio: float = 2**0.5
    samples: tuple[int, ...] = ()  # training-set sizes tried instead of the geometric grid
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
    point below is a hit too, so ``start`` only needs to be a guess. While the error is no better than
    the zero predictor's (>= 1) the walk up skips every other point (the walk down fills in the miss
    next to the first hit). Once the learner is halfway from
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
        step = 2 if err(i) >= 1 else 1
        i = len(grid) - 1 if i + step >= len(grid) and i < len(grid) - 1 else i + step
    if i >= len(grid):
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
    points train). The test set is drawn before the pool, so it does not depend on the pool's size."""
    g = torch.Generator().manual_seed(draw)
    target = LowRankPolynomial.random(d, cfg.rank, cfg.degree, g, lower_share=_share(cfg))
    x_test = sample_sphere(cfg.test_samples, d, g)
    x_pool = sample_sphere(max([cfg.max_samples, *cfg.samples]), d, g)
    return (x_pool.to(device), target(x_pool).to(device), x_test.to(device), target(x_test).to(device))


def _share(cfg) -> float | None:
    """The target's degree p-2 share, None for the monomial."""
    return None if cfg.lower_share in (None, "monomial") else float(cfg.lower_share)


def _share_argument(text: str):
    return "monomial" if text == "monomial" else float(text)


def target_degree_shares(cfg) -> dict[int, float]:
    """{d: fraction of the target's variance in its degree-p harmonic} (the rest is in lower degrees)."""
    shares = {}
    for d in cfg.dims:
        target = LowRankPolynomial.random(d, 1, cfg.degree, torch.Generator().manual_seed(0), lower_share=_share(cfg))
        shares[d] = degree_shares(target.polynomial(), d)[cfg.degree]
    return shares


def sweep(cfg, seed: int, device, settings_for: Callable[[int], LearnerSettings], bar, rows: list,
          thresholds: dict, on_row: Callable[[dict], None] = lambda row: None, fit_bar=None) -> None:
    """Runs the threshold search for every d and learner, filling ``rows`` (every evaluation, also
    passed to ``on_row`` as it finishes) and ``thresholds`` ({learner: {d: n*}}) in place, so an
    interrupted sweep keeps what finished.

    The test error at (d, n) is the mean over ``cfg.repeats`` independent draws of the target, the
    data and the initialization; the training error (same normalization, by the test targets'
    variance) is recorded beside it. ``fit_bar(total, desc)``, when given, makes a progress bar for
    the training steps of one evaluation (all its draws).
    """
    grid = sorted(set(cfg.samples)) if cfg.samples else sample_grid(cfg.grid_ratio, cfg.max_samples)
    for name in cfg.learners:
        thresholds.setdefault(name, {})
    starts = {name: 0 for name in cfg.learners}
    for d in cfg.dims:
        draws = [seed * 1_000_000 + repeat * 1_000 + d for repeat in range(cfg.repeats)]
        problems = [_problem(cfg, d, draw, device) for draw in draws]
        settings = [dataclasses.replace(settings_for(d), seed=draw) for draw in draws]
        for name in cfg.learners:
            def error_at(n, name=name):
                t = time.perf_counter()
                test, train = [], []
                units = max(1, fit_steps(name, settings[0]))
                steps = fit_bar(len(problems) * units, f"{name} d={d} n={n}") if fit_bar else None
                for i, ((x_pool, y_pool, x_test, y_test), s) in enumerate(zip(problems, settings)):
                    x, y = x_pool[:n], y_pool[:n]
                    predict = fit(name, x, y, s, on_step=steps.update if steps is not None else None)
                    var = y_test.var()
                    test.append(((predict(x_test) - y_test).pow(2).mean() / var).item())
                    train.append(((predict(x) - y).pow(2).mean() / var).item())
                    if steps is not None:  # L-BFGS may stop early or evaluate more often than it iterates
                        steps.n = (i + 1) * units
                        steps.refresh()
                if steps is not None:
                    steps.close()
                row = {"learner": name, "d": d, "n": n, "test_error": sum(test) / len(test),
                       "test_error_min": min(test), "test_error_max": max(test),
                       "train_error": sum(train) / len(train), "seconds": round(time.perf_counter() - t, 3)}
                rows.append(row)
                on_row(row)
                bar.set_postfix_str(f"{name} d={d} n={n} err={row['test_error']:.3f}")
                bar.write(f"  {name:<18} d={d:<3} n={n:<6} test {row['test_error']:.4f} "
                          f"[{row['test_error_min']:.4f}, {row['test_error_max']:.4f}]  "
                          f"train {row['train_error']:.4f}  {row['seconds']:.1f} s", file=sys.stderr)
                return row["test_error"]

            n_star, hit = find_threshold(error_at, grid, starts[name], cfg.target_error, cfg.patience)
            thresholds[name][d] = n_star
            if hit is not None:
                starts[name] = max(0, hit - 1)
            bar.update(1)


# learner -> (kind of bound, exponent of d as a function of p, rank in the claimed ordering)
CLAIMS = {
    "ntk-krr": ("lower", lambda p: p, 2),
    "ntk-gd": ("lower", lambda p: p, 2),
    "quadratic-signs": ("upper", lambda p: p - 1, 1),
    "quadratic-expected": ("upper", lambda p: p - 1, 1),
    "hierarchical": ("upper", lambda p: math.ceil(p / 2), 0),
}


def claims_for(learners, degree: int) -> dict[str, tuple[str, float, int]]:
    """{learner: (bound, claimed exponent, rank)}: the NTK's d^p is a lower bound, the quadratic model's
    d^(p-1) and the hierarchical learner's d^ceil(p/2) are upper bounds; the claimed ordering at large
    d is hierarchical (rank 0) < quadratic (1) < NTK (2) in samples needed. The full network carries
    no claim."""
    return {name: (CLAIMS[name][0], CLAIMS[name][1](degree), CLAIMS[name][2]) for name in learners if name in CLAIMS}


def harmonic_count(d: int, p: int) -> int:
    """Number of spherical harmonics in R^d of degree <= p with the parity of p: the dimension of
    the even (or odd) polynomials of degree <= p on the sphere, which an inner-product kernel must
    resolve to learn a degree-p target. It grows like d^p / p! only once d >> p."""
    def harmonics(k):  # degree exactly k: C(d+k-1, k) - C(d+k-3, k-2)
        return math.comb(d + k - 1, k) - (math.comb(d + k - 3, k - 2) if k >= 2 else 0)

    return sum(harmonics(k) for k in range(p % 2, p + 1, 2))


def _fit_with_error(xs, ys) -> tuple[float, float, float]:
    """(slope, intercept, standard error of the slope) of log y against log x; the error is NaN
    with fewer than three points."""
    slope, intercept = fit_power_law(xs, ys)
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if math.isfinite(y) and y > 0]
    if len(pts) < 3 or not math.isfinite(slope):
        return slope, intercept, math.nan
    mx = sum(p[0] for p in pts) / len(pts)
    resid = sum((p[1] - intercept - slope * p[0]) ** 2 for p in pts)
    return slope, intercept, math.sqrt(resid / (len(pts) - 2) / sum((p[0] - mx) ** 2 for p in pts))


def judge(thresholds: dict, claims: dict, tolerance: float, target_error: float, degree: int,
          max_tried: dict | None = None):
    """The verdict in the form of each claim, from the fitted exponents of n* in d.

    Per learner with a claim: a lower bound holds when exponent >= claim - tolerance, an upper bound
    when exponent <= claim + tolerance; a learner that missed the target at some d has no measured
    exponent there and fails its check. At the largest d every learner must need fewer samples than
    the learners ranked above it (hierarchical < quadratic < NTK); a learner that missed the target
    counts as needing more than ``max_tried[learner]`` samples. The two-sided check
    |exponent - claim| <= tolerance is reported beside each (not part of the verdict), with the
    slope's standard error. Returns (verdict, summary).
    """
    exponents, checks, parts, two_sided = {}, {}, [], {}
    dims_all = sorted({d for by_d in thresholds.values() for d in by_d})
    for name, by_d in thresholds.items():
        dims = sorted(by_d)
        slope, intercept, stderr = _fit_with_error(dims, [by_d[d] for d in dims])
        missed = [d for d in dims if not math.isfinite(by_d[d])]
        exponents[name] = {"exponent": slope, "stderr": stderr, "intercept": intercept,
                           "dims_reached": [d for d in dims if math.isfinite(by_d[d])], "dims_missed": missed}
        text = f"{name} {slope:.2f}" + (f" +- {stderr:.2f}" if math.isfinite(stderr) else "")
        if name in claims:
            bound, claim, _ = claims[name]
            sign, limit = (">=", claim - tolerance) if bound == "lower" else ("<=", claim + tolerance)
            ok = math.isfinite(slope) and not missed and (slope >= limit if bound == "lower" else slope <= limit)
            checks[f"{name}: exponent {sign} {claim:g} {'-' if bound == 'lower' else '+'} {tolerance:g}"] = ok
            two_sided[name] = math.isfinite(slope) and abs(slope - claim) <= tolerance
            text += (f" ({sign} {limit:g}: {'yes' if ok else 'no'}; two-sided |{slope:.2f} - {claim:g}| <= "
                     f"{tolerance:g}: {'yes' if two_sided[name] else 'no'}"
                     + (f"; missed the target at d = {', '.join(map(str, missed))}" if missed else "") + ")")
        parts.append(text)
    reason = f"exponent of n* (test error <= {target_error}) in d = {', '.join(map(str, dims_all))}: "
    reason += "; ".join(parts)
    ordering = {}
    ranked = sorted((claims[name][2], name) for name in thresholds if name in claims)
    if dims_all and len({r for r, _ in ranked}) > 1:
        top = dims_all[-1]
        tried = max_tried or {}

        def need(name):  # (n*, text): a missed target counts as more than the largest n tried
            n = thresholds[name].get(top, math.nan)
            if math.isfinite(n):
                return n, f"{n:.0f}"
            most = tried.get(name, math.nan)
            return (math.inf, f">{most:.0f}") if math.isfinite(most) else (math.nan, "not run")

        ok = all(math.isfinite(need(a)[0]) and need(a)[0] < need(b)[0]
                 for r1, a in ranked for r2, b in ranked if r1 < r2)
        ordering = {"d": top, "n_star": {name: need(name)[0] for _, name in ranked}, "holds": ok}
        checks[f"ordering at d = {top}"] = ok
        groups = []  # learners of one rank share a group: "{a 10, b 12} < c 40"
        for rank in sorted({r for r, _ in ranked}):
            members = [f"{name} {need(name)[1]}" for r, name in ranked if r == rank]
            groups.append(members[0] if len(members) == 1 else "{" + ", ".join(members) + "}")
        reason += f"; at d = {top} claimed n* {' < '.join(groups)}: {'yes' if ok else 'no'}"
    reference = {}
    if len(dims_all) >= 2:
        counts = [harmonic_count(d, degree) for d in dims_all]
        ref_slope, _ = fit_power_law(dims_all, counts)
        regime = "pre-asymptotic" if ref_slope < degree - tolerance else "near asymptotic"
        reference = {"harmonic_count": dict(zip(dims_all, counts)), "local_exponent": ref_slope, "regime": regime}
        reason += (f". Regime: the degree <= {degree} harmonics an inner-product kernel must resolve grow as "
                   f"d^{ref_slope:.2f} over these d ({regime}; asymptotically d^{degree})")
    failed = [name for name, ok in checks.items() if not ok]
    reason += f"; tolerance {tolerance}" + (f". Failed: {'; '.join(failed)}" if failed else "")
    summary = {"n_star": thresholds, "exponents": exponents,
               "claims": {k: {"bound": v[0], "exponent": v[1], "rank": v[2]} for k, v in claims.items()},
               "checks": checks, "two_sided_within_tolerance": two_sided, "ordering": ordering,
               "kernel_reference": reference}
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
        claim = summary["claims"].get(name)
        if claim is not None:
            label += f" (claim {'>=' if claim['bound'] == 'lower' else '<='} {claim['exponent']:g})"
        ax.plot(dims, [by_d[d] for d in dims], markers[name], color=colors[name], label=label, mfc="none", ms=8)
        if math.isfinite(fit["exponent"]):
            ds = [min(cfg.dims), max(cfg.dims)]
            ax.plot(ds, [math.exp(fit["intercept"]) * d ** fit["exponent"] for d in ds], "-", color=colors[name],
                    alpha=0.7)
        missed = [d for d in sorted(by_d) if not math.isfinite(by_d[d])]
        largest = [max((r["n"] for r in rows if r["learner"] == name and r["d"] == d), default=math.nan)
                   for d in missed]
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
            # errors above 10 and diverged runs (NaN) are drawn at 10
            ax_err.plot([p[0] for p in pts], [min(p[1], 10.0) if math.isfinite(p[1]) else 10.0 for p in pts],
                        marker=".", color=colors[name],
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
    g.add_argument("--lower-share", type=_share_argument, metavar="SHARE|monomial",
                   help="share of the target's variance in its degree p-2 harmonic, the rest in degree p; "
                        f"'monomial': the centered (b.x)^p, for p = 4 a share of 0.85 at d = 8 that falls to 0.75 "
                        f"as d grows ({c.lower_share if c.lower_share is not None else 'monomial'})")
    g.add_argument("--learners", nargs="+", choices=learners, help=f"learners to compare {c.learners}")
    g.add_argument("--target-error", type=float, help=f"test error MSE / Var(y) that defines n* ({c.target_error})")
    g.add_argument("--test-samples", type=int, help=f"test samples per d ({c.test_samples})")
    g.add_argument("--max-samples", type=int, help=f"largest training set tried ({c.max_samples})")
    g.add_argument("--grid-ratio", type=float, help=f"ratio of consecutive training-set sizes ({c.grid_ratio:.3g})")
    g.add_argument("--samples", type=int, nargs="+",
                   help="training-set sizes to try instead of the geometric grid (one size: a single evaluation "
                        "per learner and d, for probing settings)")
    g.add_argument("--repeats", type=int, help=f"independent draws averaged at every (d, n) ({c.repeats})")
    g.add_argument("--patience", type=int,
                   help=f"grid points without a 5%% better error before giving up on a learner ({c.patience})")
    g.add_argument("--tolerance", type=float,
                   help=f"slack of the one-sided exponent checks: NTK >= p - tolerance, quadratic <= p - 1 + "
                        f"tolerance, hierarchical <= ceil(p/2) + tolerance ({c.tolerance})")
    g.add_argument("--width", type=int, help=f"neurons m of every two-layer model ({c.width})")
    g.add_argument("--activation", help=f"activation of every model ({c.activation})")
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


RUN_FIELDS = ["learner", "d", "n", "test_error", "test_error_min", "test_error_max", "train_error", "seconds"]


def _threshold_table(thresholds: dict, rows: list, summary: dict, shares: dict, degree: int) -> str:
    """n* per learner and d, with the fitted exponent; '>N' where the target was missed up to N."""
    dims = sorted({d for by_d in thresholds.values() for d in by_d})
    lines = ["n* by d" + "".join(f"{f'd={d}':>9}" for d in dims) + "   exponent",
             f"{'degree-' + str(degree) + ' share':<18}" + "".join(f"{shares.get(d, math.nan):>9.3f}" for d in dims)]
    for name, by_d in thresholds.items():
        cells = []
        for d in dims:
            n = by_d.get(d)
            if n is None:
                cells.append("-")
            elif math.isfinite(n):
                cells.append(f"{n:.0f}")
            else:
                tried = max((r["n"] for r in rows if r["learner"] == name and r["d"] == d), default=0)
                cells.append(f">{tried}")
        fit = summary["exponents"][name]
        err = f" +- {fit['stderr']:.2f}" if math.isfinite(fit["stderr"]) else ""
        lines.append(f"{name:<18}" + "".join(f"{c:>9}" for c in cells) + f"   {fit['exponent']:.2f}{err}")
    return "\n".join(lines)


def run_experiment(name: str, cfg, preset: str, args, settings_for, title: str, extra: dict | None = None) -> int:
    """Sweep, tables, figure, verdict: the body shared with the hierarchical experiment. ``extra``
    joins the summary in the JSON.

    Every evaluation is appended to ``<name>_runs.csv`` as it finishes; Ctrl-C stops the sweep and
    the run ends normally with what finished (JSON, thresholds, figure, a verdict marked partial).
    """
    device = setup(args)
    results = Results(name, args.out, cfg, preset, args)
    bar = progress(len(cfg.dims) * len(cfg.learners), f"{name} [{preset}]", "search", args)
    rows, thresholds = [], {}
    with Interruptible(bar.close) as run:
        sweep(cfg, args.seed, device, settings_for, bar, rows, thresholds,
              on_row=results.stream(f"{name}_runs", RUN_FIELDS),
              fit_bar=lambda total, desc: progress(total, desc, "step", args, position=1))
    if run.stopped:
        print(f"interrupted: keeping the {len(rows)} evaluations that finished", file=sys.stderr)
    results.table(f"{name}_thresholds", [{"learner": k, "d": d, "n_star": n} for k, by_d in thresholds.items()
                                         for d, n in by_d.items()])
    max_tried = {k: max((r["n"] for r in rows if r["learner"] == k), default=math.nan) for k in thresholds}
    verdict, summary = judge(thresholds, claims_for(cfg.learners, cfg.degree), cfg.tolerance, cfg.target_error,
                             cfg.degree, max_tried)
    shares = target_degree_shares(cfg)
    summary["target_degree_share"] = shares
    summary.update(extra or {})
    run.mark(verdict, summary)
    plot(rows, thresholds, summary, cfg, title, results, name.replace("-", "_"))
    print(_threshold_table(thresholds, rows, summary, shares, cfg.degree))
    results.finish(summary, verdict)
    return run.exit_code


def run(args: argparse.Namespace) -> int:
    cfg, preset = resolve_config(SampleComplexityConfig, PRESETS, args)
    return run_experiment(NAME, cfg, preset, args, lambda d: learner_settings(cfg),
                          f"NTK vs quadratic model, p = {cfg.degree}")
