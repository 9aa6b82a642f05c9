"""Running one case: inputs, warm-up (and compilation), interleaved timing, the matmul ceiling,
peak memory and the agreement check; and the width sweep.
"""
from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field

import torch

from ..utils import timing
from ..utils.results import available_memory
from . import budget as budget_mod
from . import memory
from .cases import CEILING, Case
from .floor import FloorRate
from .flops import MatmulCeiling, gemms, model_flops
from .workloads import compiled_function, input_bytes, make_call, make_inputs, max_rel_error, snapshot, tolerance

FLOOR = "floor"  # the 2048^3 matmul timed with the others; becomes floor_s in every row


@dataclass
class Settings:
    impls: tuple = ("taylornet", "eager", "compiled")
    repeats: int = 10
    warmup: int = 2
    min_time: float = 0.05
    max_seconds: float = 30.0
    memory: str = "subprocess"      # subprocess | inprocess | none (CPU); CUDA: allocator statistics
    budget_bytes: float | None = None
    compile_mode: str | None = None
    sweep_compile_mode: str | None = "default"   # the width sweep only measures memory
    threads: int | None = None
    check: bool = True
    seed: int = 0


@dataclass
class State:
    """What earlier cases taught: measured (width, total bytes) per (series, impl), for predictions."""
    points: dict = field(default_factory=dict)

    def add(self, case: Case, impl: str, total: float) -> None:
        self.points.setdefault((case.series_key(), impl), []).append((case.m, total))

    def get(self, case: Case, impl: str) -> list:
        return self.points.get((case.series_key(), impl), [])


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if torch.cuda.is_available() and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    msg = str(exc)
    return "out of memory" in msg.lower() or "can't allocate memory" in msg


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def memory_limit(case: Case, settings: Settings) -> float:
    """Bytes one call may need: the budget, and never more than the device can give right now."""
    avail = available_memory(case.device)
    limits = [v for v in (settings.budget_bytes, 0.9 * avail if avail else None) if v]
    return min(limits) if limits else float("inf")


def predicted_total(case: Case, impl: str, input_bytes: int, state: State) -> tuple[float, str]:
    """(bytes, "measured" | "analytic"): extrapolated from smaller widths when there are some."""
    measured = budget_mod.predict(state.get(case, impl), case.m)
    if measured is not None:
        return measured, "measured"
    itemsize = torch.empty((), dtype=getattr(torch, case.dtype)).element_size()
    return input_bytes + budget_mod.analytic_peak(case, impl, itemsize), "analytic"


def run_case(case: Case, settings: Settings, state: State, progress=None) -> list[dict]:
    """All rows (one per implementation, plus the matmul ceiling) of one case."""

    def stage(text):
        if progress is not None:
            progress(text)

    device = case.device
    if "compiled" in settings.impls:
        torch._dynamo.reset()  # a fresh cache per case: compiled once, never hitting the recompile limit
    base = {**case.to_dict(), "case": case.label(), "slug": case.slug(), "flops": model_flops(case),
            "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    rows = {impl: {**base, "impl": impl, "status": "ok", "note": ""} for impl in settings.impls}
    nbytes = input_bytes(case)
    limit = memory_limit(case, settings)
    calls, numbers, snaps = {}, {}, {}
    todo = []
    for impl in settings.impls:
        r = rows[impl]
        r["input_bytes"] = nbytes
        guess, source = predicted_total(case, impl, nbytes, state)
        r["predicted_total_bytes"] = guess
        # On CPU running out of memory summons the OOM killer: never start a case predicted not to
        # fit. On CUDA an OOM is an exception, so only a measured extrapolation skips a case.
        if guess > limit and (source == "measured" or device == "cpu"):
            r["status"] = "skipped"
            r["note"] = f"predicted ({source}) {guess / 2**30:.2f} GiB > limit {limit / 2**30:.2f} GiB"
        else:
            todo.append(impl)
    inputs = None
    if todo:
        stage("inputs")
        try:
            inputs = make_inputs(case, seed=settings.seed)
        except Exception as exc:  # noqa: BLE001 - e.g. the n x m cotangent of features_fb
            for impl in todo:
                rows[impl]["status"] = "oom" if _is_oom(exc) else "error"
                rows[impl]["note"] = "creating the inputs: " + _short(exc)
            todo = []
            _free(device)

    for impl in todo:
        r = rows[impl]
        stage(f"{impl}: {'compile' if impl == 'compiled' else 'warm-up'}")
        call = result = failure = None
        try:
            call = make_call(case, impl, inputs, settings.compile_mode)
            t0 = time.perf_counter()
            result = call()
            _sync(device)
            first = time.perf_counter() - t0
            r["first_call_s"] = first
            if impl == "compiled":
                r["compile_s"] = first
            for _ in range(max(0, settings.warmup - (0 if impl == "compiled" else 1))):
                del result
                result = call()
            if settings.check:
                snaps[impl] = snapshot(result)
            del result
            t_call = timing.time_calls(call, 1)
        except Exception as exc:  # noqa: BLE001 - recorded in the results, the run goes on
            failure = ("oom" if _is_oom(exc) else "error", _short(exc))
        if failure is not None:  # outside the except block, so the failed call's frames are gone
            r["status"], r["note"] = failure
            call = result = None  # noqa: F841 - drops the failed call's outputs before freeing memory
            _free(device)
            continue
        calls[impl] = call
        numbers[impl] = timing.calibrate(t_call, settings.min_time)
        r["number"] = numbers[impl]
        r["_t_call"] = t_call

    # the ceiling: the model's GEMMs on the same shapes, preallocated
    stage("matmul ceiling")
    ceiling_max = min(0.25 * limit, 2 * 2**30) if device == "cpu" else 0.5 * limit
    mm_row = {**base, "impl": CEILING, "status": "ok", "note": "", "input_bytes": None}
    mm = None
    try:
        mm = MatmulCeiling(case, max_bytes=ceiling_max, seed=settings.seed)
        mm()
        _sync(device)
        t_mm = timing.time_calls(mm, 1)
        mm_row["number"] = numbers[CEILING] = timing.calibrate(t_mm, settings.min_time)
        mm_row["ceiling_chunks"] = mm.chunks
        mm_row["gemms"] = [dict(name=g.name, M=g.M, K=g.K, N=g.N) for g in gemms(case)]
        if mm.chunks > 1:
            mm_row["note"] = f"m split into {mm.chunks} parts, time scaled ×{mm.chunks}"
        calls[CEILING] = mm
        mm_row["_t_call"] = t_mm  # one chunk: the time of a sample
    except Exception as exc:  # noqa: BLE001
        mm_row["status"] = "oom" if _is_oom(exc) else "error"
        mm_row["note"] = _short(exc)
        _free(device)
    rows[CEILING] = mm_row

    # the compute floor: this case's FLOPs at the rate of a 2048^3 matmul, interleaved with the others
    floor = FloorRate(device, case.dtype, seed=settings.seed)
    floor()
    calls[FLOOR] = floor
    numbers[FLOOR] = 1
    rows[FLOOR] = {"_t_call": timing.time_calls(floor, 1), "status": "ok"}

    # interleaved timing rounds
    repeats = {k: timing.repeats_within(rows[k]["_t_call"] * numbers[k], settings.repeats, settings.max_seconds)
               for k in calls}

    def failed(name, exc):
        rows[name]["status"] = "oom" if _is_oom(exc) else "error"
        rows[name]["note"] = _short(exc)

    stage("timing")
    samples = timing.interleaved(calls, numbers, repeats,
                                 on_round=lambda i, n: stage(f"timing round {i}/{n}"), on_error=failed)
    floor_samples = samples.pop(FLOOR, [])
    rows.pop(FLOOR, None)
    calls.pop(FLOOR, None)
    floor_rate = floor.rate(timing.summarize(floor_samples)["median_s"]) if floor_samples else None
    floor = None
    for name, xs in samples.items():
        if rows[name]["status"] != "ok":
            continue
        if name == CEILING:
            xs = [x * mm.scale for x in xs]
        rows[name].update(timing.summarize(xs))
    calls.pop(CEILING, None)
    mm = None

    # peak memory
    for impl in settings.impls:
        r = rows[impl]
        if r["status"] != "ok" or settings.memory == "none":
            continue
        stage(f"{impl}: memory")
        if device == "cuda":
            try:
                res = memory.cuda_peak(calls[impl])
            except Exception as exc:  # noqa: BLE001
                res = {"status": "oom" if _is_oom(exc) else "error", "error": _short(exc)}
                _free(device)
        elif settings.memory == "inprocess":
            res = memory.cpu_peak_here(calls[impl], warm=True)
        else:
            res = memory.measure_subprocess(case, impl, threads=settings.threads,
                                            compile_mode=settings.compile_mode, seed=settings.seed,
                                            preload_compiler="compiled" in settings.impls)
        if res.get("status", "ok") != "ok" or res.get("peak_bytes") is None:
            r["memory_method"] = res.get("method")
            failed = f"memory: {res.get('status')} {res.get('error', '')}".strip()
            r["note"] = (r["note"] + " " if r["note"] else "") + failed
            continue
        r["peak_bytes"] = res["peak_bytes"]
        r["total_bytes"] = nbytes + res["peak_bytes"]
        r["memory_method"] = res.get("method")
        r["memory_upper_bound"] = bool(res.get("upper_bound"))
        state.add(case, impl, r["total_bytes"])

    # agreement with the eager reference
    if settings.check and "eager" in snaps:
        for impl, snap in snaps.items():
            if impl == "eager":
                continue
            err = max_rel_error(snap, snaps["eager"])
            rows[impl]["max_rel_error"] = err
            rows[impl]["check"] = "ok" if err <= tolerance(case) else "MISMATCH"

    calls.clear()
    inputs = None
    _free(device)
    out = list(rows.values())
    for r in out:
        r.pop("_t_call", None)
        if floor_rate:
            r["floor_flops_per_s"] = floor_rate
            r["floor_s"] = r["flops"] / floor_rate
    from .report import add_derived
    add_derived(out)
    return out


# ---- width sweep -------------------------------------------------------------------------------

def probe_memory(case: Case, impl: str, settings: Settings, fn=None) -> dict:
    """Total bytes (inputs + the call's peak) of one call of (case, impl), or a failure status.

    CUDA: in this process (``fn``: a compiled function to reuse across widths); CPU: a fresh worker.
    """
    if case.device == "cuda":
        inputs = call = None
        try:
            inputs = make_inputs(case, seed=settings.seed)
            call = make_call(case, impl, inputs, settings.compile_mode, fn=fn)
            result = call()
            del result
            res = memory.cuda_peak(call)
            res["total_bytes"] = inputs.nbytes + res["peak_bytes"]
            res["status"] = "ok"
        except Exception as exc:  # noqa: BLE001
            res = {"status": "oom" if _is_oom(exc) else "error", "error": _short(exc)}
        finally:
            inputs = call = None
            _free("cuda")
        return res
    res = memory.measure_subprocess(case, impl, threads=settings.threads, compile_mode=settings.compile_mode,
                                    seed=settings.seed, preload_compiler="compiled" in settings.impls)
    if res.get("status") == "ok" and res.get("peak_bytes") is not None:
        res["total_bytes"] = res["input_bytes"] + res["peak_bytes"]
    return res


def width_sweep(case: Case, impl: str, settings: Settings, *, start: int = 1 << 12, cap: int = 1 << 24,
                granularity: int = 1024, progress=None) -> dict:
    """The largest width m (a multiple of ``granularity``) at which one call of (case, impl) fits
    in the memory limit: measure two widths, extrapolate the affine line, then confirm by running
    at the predicted width (stepping down until a run fits)."""
    limit = memory_limit(case, settings)
    series = case.label().replace(f" m={case.m}", "")
    points, probes = [], []
    fn = None
    if impl == "compiled" and case.device == "cuda":
        # One dynamic-shape compilation for all probed widths (memory does not depend on autotuning).
        torch._dynamo.reset()
        fn = compiled_function(case, settings.sweep_compile_mode, dynamic=True)

    def probe(m) -> str:
        """"fits", "too big" (measured above the limit, or out of memory) or "error"."""
        if progress is not None:
            progress(f"sweep {impl} m={m}")
        res = probe_memory(case.with_width(m), impl, settings, fn=fn)
        probes.append({"m": m, "status": res.get("status"), "total_bytes": res.get("total_bytes"),
                       "error": res.get("error")})
        if res.get("status") == "ok" and res.get("total_bytes") is not None:
            points.append((m, res["total_bytes"]))
            return "fits" if res["total_bytes"] <= limit else "too big"
        return "too big" if res.get("status") == "oom" else "error"

    def result(largest, how, **extra):
        return {"impl": impl, "series": series, "limit_bytes": limit, "largest_width": largest, "how": how,
                "probes": probes, **extra}

    m = start
    for _ in range(2):
        got = probe(m)
        if got == "error":
            return result(None, f"error at m={m}: {probes[-1]['error']}")
        if got == "too big":
            return result(None, f"does not fit even at m={m}")
        m *= 4
    cross = budget_mod.budget_width(points, limit)
    capped = cross is None or cross["width"] > cap
    target = cap if capped else max(granularity, int(cross["width"]) // granularity * granularity)
    largest, how = None, "no probe fit"
    m = target
    for _ in range(6):
        if case.device == "cpu" and (budget_mod.predict(points, m) or 0) > memory_limit(case, Settings()):
            how = "extrapolated (too large to run here)"
            break
        got = probe(m)
        if got == "fits":
            largest, how = m, "measured" if m == target else "measured (stepped down)"
            break
        if got == "error":
            how = f"error at m={m}: {probes[-1]['error']}"
            break
        m = max(granularity, int(m * 0.95) // granularity * granularity)
    if capped and largest == cap:
        how += f", capped at m={cap}"
    return result(largest, how, predicted_width=cross["width"] if cross else None, capped=capped)
