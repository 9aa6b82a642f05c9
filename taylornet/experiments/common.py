"""Plumbing shared by the experiments: presets, devices and seeds, result files and the verdict line
(progress bars, plotting and the file writers are taylornet.utils', shared with the benchmark).

Every experiment has a config dataclass whose defaults are the CPU setting, a ``quick`` preset
(minutes on two CPU cores) and a ``large`` preset (m >= 2^20 on one GPU). Knobs given on the command
line override the preset.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from pathlib import Path

import torch

from ..utils import plotting, results
from ..utils.progress import progress_bar

__all__ = [
    "add_common_arguments", "resolve_config", "setup", "progress", "pyplot", "Results", "Verdict", "fit_power_law",
    "Interruptible",
]


def add_common_arguments(p: argparse.ArgumentParser, name: str) -> None:
    """--quick, --large, --device, --seed, --out, --threads, --no-progress."""
    presets = p.add_mutually_exclusive_group()
    presets.add_argument("--quick", action="store_true",
                         help="small CPU preset: at most a few minutes on 2 cores")
    presets.add_argument("--large", action="store_true",
                         help="large-width preset for one GPU (m >= 2^20); use with --device cuda")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, initialization, signs and noise")
    p.add_argument("--out", type=Path, default=Path("out/experiments") / name,
                   help=f"output folder for JSON, CSV and PNG (default out/experiments/{name})")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def resolve_config(config_cls, presets: dict, args: argparse.Namespace):
    """The config: class defaults, then the chosen preset ("quick" / "large"), then explicit knobs.

    Knob arguments are the config's field names and default to None on the command line.
    """
    preset = "quick" if args.quick else "large" if args.large else None
    values = dict(presets.get(preset, {}))
    for field in dataclasses.fields(config_cls):
        given = getattr(args, field.name, None)
        if given is not None:
            values[field.name] = tuple(given) if isinstance(given, list) else given
    return config_cls(**values), preset or "default"


def setup(args: argparse.Namespace) -> torch.device:
    """Seeds torch (CPU and CUDA), sets the thread count and returns the device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available in this torch build or machine")
    return device


def progress(total: int, desc: str, unit: str, args: argparse.Namespace, **kwargs):
    """A progress bar on stderr (off with --no-progress); ``kwargs`` go to tqdm."""
    return progress_bar(total, desc, unit, disable=args.no_progress, leave=False, **kwargs)


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (figures go to files only)."""
    plt = plotting.pyplot()
    if plt is None:
        raise ImportError("the experiments draw figures with matplotlib: pip install 'taylornet[experiments]'")
    return plt


def fit_power_law(xs, ys) -> tuple[float, float]:
    """Least-squares fit of log y = slope log x + intercept; returns (slope, intercept).

    NaN when fewer than two finite positive points are left.
    """
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys)
           if x and y and math.isfinite(x) and math.isfinite(y) and x > 0 and y > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return math.nan, math.nan
    fit = statistics.linear_regression([p[0] for p in pts], [p[1] for p in pts])
    return fit.slope, fit.intercept


class Interruptible:
    """``with Interruptible(close) as run:`` ends the block at Ctrl-C instead of ending the program, and
    calls ``close()`` (the progress bars) either way: the experiment then writes what finished.
    ``run.stopped`` says whether it was interrupted; ``run.mark(verdict, summary)`` marks the
    results partial if so, and ``run.exit_code`` is 130 (as for SIGINT) or 0."""

    def __init__(self, close=None):
        self.stopped = False
        self._close = close

    def __enter__(self) -> Interruptible:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._close is not None:
            self._close()
        self.stopped = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        return self.stopped

    def mark(self, verdict: Verdict, summary: dict) -> None:
        if self.stopped:
            verdict.reason = "interrupted run, partial results: " + verdict.reason
            summary["interrupted"] = True

    @property
    def exit_code(self) -> int:
        return 130 if self.stopped else 0


@dataclasses.dataclass
class Verdict:
    """Whether the claim held in this run: "HELD", "PARTLY HELD" or "NOT HELD", and why (numbers)."""

    status: str
    reason: str

    @classmethod
    def from_checks(cls, checks: dict[str, bool], reason: str) -> Verdict:
        """HELD if every check passed, NOT HELD if none did, PARTLY HELD otherwise."""
        passed = sum(bool(v) for v in checks.values())
        status = "HELD" if passed == len(checks) else "NOT HELD" if passed == 0 else "PARTLY HELD"
        return cls(status, reason)

    def line(self, experiment: str) -> str:
        return f"verdict ({experiment}): {self.status} - {self.reason}"


class Results:
    """Collects one run's tables and figures under ``out`` and writes ``<name>.json`` at the end.

    The JSON holds the experiment name, preset, config, device, seed, runtime, summary numbers, the
    verdict and the names of the CSV and PNG files written beside it.
    """

    def __init__(self, name: str, out: Path, config, preset: str, args: argparse.Namespace):
        self.name, self.out = name, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.meta = {"experiment": name, "preset": preset, "config": dataclasses.asdict(config),
                     "device": str(args.device), "seed": args.seed, "torch": torch.__version__}
        self.files: list[str] = []
        self.started = time.perf_counter()
        self._streams = []

    def table(self, stem: str, rows: list[dict]) -> Path:
        """Writes rows (dicts with the same keys) to ``<stem>.csv``."""
        path = results.write_csv(self.out / f"{stem}.csv", rows)
        self.files.append(path.name)
        return path

    def stream(self, stem: str, fieldnames: list[str]):
        """Starts ``<stem>.csv`` for rows written as they are measured (an interrupted run keeps them);
        returns a function that appends one row (a dict with ``fieldnames``) and flushes it."""
        stream = results.CsvStream(self.out / f"{stem}.csv", fieldnames)
        self._streams.append(stream)
        self.files.append(stream.path.name)
        return stream.write

    def figure(self, fig, stem: str) -> Path:
        """Saves a matplotlib figure to ``<stem>.png`` and closes it."""
        path = plotting.save_figure(fig, self.out / f"{stem}.png", bbox_inches="tight")
        self.files.append(path.name)
        return path

    def finish(self, summary: dict, verdict: Verdict) -> Path:
        """Closes the streamed tables, writes ``<name>.json`` and prints the verdict line."""
        for f in self._streams:
            f.close()
        record = {**self.meta, "runtime_s": round(time.perf_counter() - self.started, 2),
                  "summary": summary, "verdict": {"status": verdict.status, "reason": verdict.reason,
                                                  "line": verdict.line(self.name)},
                  "files": self.files}
        path = results.write_json(self.out / f"{self.name}.json", record)
        print(f"results: {self.out}/ ({', '.join([path.name, *self.files])})")
        print(verdict.line(self.name))
        return path
