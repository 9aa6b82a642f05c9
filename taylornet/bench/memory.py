"""Peak memory of one call.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, around one call made
after the warm-up; the inputs are already allocated, so peak - allocated-before is the call's own.

CPU (``subprocess``, the default): each (case, implementation) runs in a fresh Python process
(forked from a server process that has only imported torch and taylornet), creates the same inputs,
builds the callable (compiling for "compiled") and calls it once as warm-up. It then collects
garbage, empties taylornet's cache of released n x m buffers (``taylornet.ops.saved_cache``: the
warm-up's buffers would otherwise be resident before the call and missing from its peak), returns
freed heap pages to the kernel (glibc ``malloc_trim(0)``), reads its resident set
``VmRSS`` as the baseline, resets the kernel's high-water mark (writing ``5`` to
``/proc/self/clear_refs``, Linux >= 4.0) and makes one more call. The call's peak is
``VmHWM - baseline``: real resident pages the call touched beyond those of the inputs and of the
process, as the operating system counted them. Where the high-water mark cannot be reset, the
worker skips the warm-up of eager and taylornet and measures the very first call (``method``
"vmhwm-cold"); when the call does not raise the high-water mark that the process reached before
it, the result is only an upper bound and flagged so.

``inprocess`` does the same trim / reset / call in the benchmarking process itself (faster, same
meaning, but earlier cases may leave heap fragments behind).
"""
from __future__ import annotations

import ctypes
import gc

import torch

# ---- /proc and glibc helpers ---------------------------------------------------------------

def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024


def hwm_bytes() -> int | None:
    """Peak resident set size of this process (VmHWM; ru_maxrss where /proc is missing)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb * 1024


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def empty_saved_cache() -> None:
    """Free the buffers that taylornet's cache of released n x m buffers holds (its limit stays)."""
    from taylornet.ops import saved_cache

    _, limit = saved_cache()
    saved_cache(0)
    saved_cache(limit)


def trim_heap() -> bool:
    """Give freed heap memory back to the kernel (glibc malloc_trim); False if unavailable."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(ctypes.c_size_t(0))
        return True
    except (OSError, AttributeError):
        return False


# ---- measurements ----------------------------------------------------------------------------

def cuda_peak(call) -> dict:
    """Peak bytes of one call on CUDA beyond what was allocated before it."""
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = call()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del result
    return {"peak_bytes": peak - before, "method": "cuda-max-memory-allocated", "upper_bound": False}


def cpu_peak_here(call, warm: bool = True) -> dict:
    """Peak resident bytes of one call of ``call`` in this process (see the module docstring).

    ``warm``: the caller already made a warm-up call (needed for compiled callables).
    """
    gc.collect()
    empty_saved_cache()
    trim_heap()
    base = rss_bytes()
    can_reset = reset_hwm()  # the mark restarts from the current RSS, the baseline
    method = "vmhwm-reset" if can_reset else ("vmhwm" if warm else "vmhwm-cold")
    hwm_before = hwm_bytes()
    result = call()
    hwm = hwm_bytes()
    del result
    if base is None or hwm is None:
        return {"peak_bytes": None, "method": "unavailable", "upper_bound": False}
    upper = (not can_reset) and hwm <= hwm_before  # the mark may come from before the call
    return {"peak_bytes": max(0, hwm - base), "method": method, "upper_bound": upper, "rss_baseline_bytes": base}


def _measure_fresh(spec: dict) -> dict:
    """Body of the memory worker: inputs, callable, warm-up, one measured call (CPU)."""
    out = {"status": "ok"}
    try:
        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        from .cases import Case
        from .workloads import make_call, make_inputs

        case = Case.from_dict(spec["case"])
        impl = spec["impl"]
        inputs = make_inputs(case, seed=spec.get("seed", 0))
        call = make_call(case, impl, inputs, spec.get("compile_mode"))
        # Warm up when the high-water mark can be reset afterwards (compiling always needs it).
        warm = reset_hwm() or impl == "compiled"
        if warm:
            result = call()
            del result
        out.update(cpu_peak_here(call, warm=warm))
        out["input_bytes"] = inputs.nbytes
    except MemoryError as exc:
        out = {"status": "oom", "error": f"MemoryError: {exc}"}
    except RuntimeError as exc:
        msg = str(exc)
        oom = "can't allocate memory" in msg or "out of memory" in msg.lower()
        out = {"status": "oom" if oom else "error", "error": (msg.splitlines() or [repr(exc)])[0][:300]}
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        out = {"status": "error", "error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"}
    return out


def _child(spec: dict, conn) -> None:
    try:
        conn.send(_measure_fresh(spec))
    finally:
        conn.close()


_CONTEXT = None


def _context(preload_compiler: bool = True):
    """A forkserver that has imported torch and taylornet once (and torch.compile's modules unless
    ``preload_compiler`` is False at the first call), so each worker starts in milliseconds as a
    fresh fork of that clean state, in which no case ever ran; spawn where there is no forkserver."""
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing as mp

        if start_method() == "forkserver":
            _CONTEXT = mp.get_context("forkserver")
            modules = ["taylornet.bench.workloads"]
            if preload_compiler:
                modules += ["torch._dynamo", "torch._inductor.compile_fx"]
            _CONTEXT.set_forkserver_preload(modules)
        else:
            _CONTEXT = mp.get_context("spawn")
    return _CONTEXT


def start_method() -> str:
    """How memory workers start: "forkserver" (Linux, macOS) or "spawn"."""
    import multiprocessing as mp

    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def measure_subprocess(case, impl: str, *, threads: int | None, compile_mode: str | None,
                       seed: int = 0, timeout: float = 900.0, preload_compiler: bool = True) -> dict:
    """Peak memory of one call of (case, impl) measured in a fresh worker process.

    Callers' main modules must be import-safe (``if __name__ == "__main__":``), as always with
    multiprocessing's forkserver and spawn methods.
    """
    spec = {"case": case.to_dict(), "impl": impl, "threads": threads, "compile_mode": compile_mode, "seed": seed}
    ctx = _context(preload_compiler)
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(spec, send), daemon=True)
    proc.start()
    send.close()
    try:
        if recv.poll(timeout):
            try:
                return recv.recv()
            except EOFError:
                pass
        else:
            proc.kill()
            return {"status": "error", "error": f"memory worker timed out after {timeout:.0f} s"}
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        recv.close()
    code = proc.exitcode
    status = "oom" if code in (-9, 137) else "error"  # SIGKILL: most likely the kernel's OOM killer
    return {"status": status, "error": f"memory worker exited with code {code} before reporting"}
