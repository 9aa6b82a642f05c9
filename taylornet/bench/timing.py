"""Timing: warm-up, calibrated inner loops, interleaved repeats, median and interquartile range.

On CPU a sample is ``time.perf_counter`` around ``number`` calls. On CUDA it is a pair of CUDA
events around the calls, after a synchronization, read after synchronizing on the end event: the
GPU time of the calls, not the launch time.

The implementations of one case are timed in interleaved rounds (taylornet, eager, compiled,
matmul, then the next round in a rotated order), so a load change on a busy machine hits all of
them alike instead of biasing whichever ran during it. The garbage collector is off while timing.
"""
from __future__ import annotations

import gc
import math
import statistics
import time
from contextlib import contextmanager

import torch


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_calls(fn, number: int, device: str) -> float:
    """Seconds per call of ``fn`` over ``number`` back-to-back calls."""
    if device == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / number
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


@contextmanager
def gc_disabled():
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


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
    if len(xs) >= 2:
        q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = med = q3 = xs[0]
    med = statistics.median(xs)
    return {
        "median_s": med, "q25_s": q1, "q75_s": q3, "iqr_s": q3 - q1,
        "iqr_rel": (q3 - q1) / med if med > 0 else 0.0,
        "min_s": xs[0], "max_s": xs[-1], "mean_s": statistics.fmean(xs), "samples": len(xs),
    }


def interleaved(fns: dict, numbers: dict, repeats: dict, device: str, on_round=None,
                on_error=None) -> dict[str, list[float]]:
    """Samples (seconds per call) for every callable in ``fns``, in rotated interleaved rounds.

    ``repeats[name]`` samples are taken of each; a callable that raises is dropped from the
    remaining rounds and reported through ``on_error(name, exc)``.
    """
    names = list(fns)
    samples = {k: [] for k in names}
    live = set(names)
    rounds = max(repeats.values(), default=0)
    with gc_disabled():
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                if name not in live or len(samples[name]) >= repeats[name]:
                    continue
                try:
                    samples[name].append(time_calls(fns[name], numbers[name], device))
                except Exception as exc:  # noqa: BLE001 - recorded, the others go on
                    live.discard(name)
                    if on_error is None:
                        raise
                    on_error(name, exc)
            if on_round is not None:
                on_round(r + 1, rounds)
    return samples
