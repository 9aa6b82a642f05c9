"""Timing: calls per sample, interleaved rounds, summaries.

A sample is ``timeit``'s time of a batch of calls (the garbage collector off) on the clock of
``torch.utils.benchmark``, which synchronizes the accelerator before it reads the time: the device
time of the calls. (``torch.utils.benchmark.Timer`` itself warms up before every measurement and sets
its own thread count, which would multiply the cost of slow calls and change what is measured.) The
implementations of one benchmark case are timed in interleaved rounds (a sample of each, then the
next round in a rotated order), so a load change on a busy machine hits all of them alike instead of
biasing whichever ran during it.
"""
from __future__ import annotations

import math
import statistics
import timeit
from collections.abc import Callable

from torch.utils.benchmark.utils.timer import timer as _device_clock


def _timer(fn: Callable[[], object]) -> timeit.Timer:
    return timeit.Timer(fn, timer=_device_clock)

__all__ = ["calibrate", "interleaved", "median_time", "repeats_within", "summarize", "time_calls"]


def time_calls(fn: Callable[[], object], number: int) -> float:
    """Seconds per call of ``fn`` over ``number`` back-to-back calls."""
    return _timer(fn).timeit(number) / number


def calibrate(seconds_per_call: float, min_time: float, max_number: int = 1000) -> int:
    """Calls per sample so that one sample lasts at least ``min_time`` (like timeit's autorange)."""
    if seconds_per_call <= 0:
        return max_number
    return int(min(max_number, max(1, math.ceil(min_time / seconds_per_call))))


def repeats_within(seconds_per_sample: float, repeats: int, max_seconds: float, min_repeats: int = 3) -> int:
    """Fewer repeats for slow calls: at most ``max_seconds`` of samples, but at least ``min_repeats``."""
    if seconds_per_sample <= 0:
        return repeats
    return max(min(repeats, min_repeats), min(repeats, int(max_seconds // seconds_per_sample)))


def summarize(samples: list[float]) -> dict:
    """median, quartiles (inclusive method), IQR, min, max, mean and count of ``samples`` (seconds)."""
    if not samples:
        return {}
    xs = sorted(samples)
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) >= 2 else (xs[0],) * 3
    return {
        "median_s": med, "q25_s": q1, "q75_s": q3, "iqr_s": q3 - q1,
        "iqr_rel": (q3 - q1) / med if med > 0 else 0.0,
        "min_s": xs[0], "max_s": xs[-1], "mean_s": statistics.fmean(xs), "samples": len(xs),
    }


def interleaved(fns: dict, numbers: dict, repeats: dict, on_round=None, on_error=None) -> dict[str, list[float]]:
    """Samples (seconds per call) for every callable in ``fns``, in rotated interleaved rounds.

    ``repeats[name]`` samples of ``numbers[name]`` calls are taken of each; a callable that raises is
    dropped from the remaining rounds and reported through ``on_error(name, exc)`` (raised without it).
    """
    names = list(fns)
    timers = {k: _timer(fns[k]) for k in names}
    samples = {k: [] for k in names}
    live = set(names)
    rounds = max(repeats.values(), default=0)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            if name not in live or len(samples[name]) >= repeats[name]:
                continue
            try:
                samples[name].append(timers[name].timeit(numbers[name]) / numbers[name])
            except Exception as exc:  # noqa: BLE001 - recorded, the others go on
                live.discard(name)
                if on_error is None:
                    raise
                on_error(name, exc)
        if on_round is not None:
            on_round(r + 1, rounds)
    return samples


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median seconds of one call of ``fn`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(_timer(fn).repeat(repeat=repeats, number=1))
