"""torch.library glue for the compiled ops: loading and fake (meta) kernels (autograd: csrc/autograd.cpp).

The schemas live in csrc/ops.cpp. Every op takes 2-D ``x`` (n, d); functional.py flattens batches.
Backward ops return an empty tensor for each gradient that was not asked for.
"""
from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

_LIB_NAME = "libtaylornet_ops.so"
_REBUILD = "rebuild it for this torch: `pip install --no-build-isolation .` in the source tree (see README)"


def _load_library(path: Path, built_for: str | None, running: str,
                  load: Callable[[str], None] = torch.ops.load_library) -> None:
    """Loads the compiled ops at ``path``, built for torch ``built_for`` (None: unknown).

    A library built for another torch than the ``running`` one may fail to load (ImportError naming
    both versions) or load and misbehave (a warning naming both).
    """
    if not path.exists():
        raise ImportError(
            f"taylornet: compiled ops {_LIB_NAME} not found in {path.parent}; "
            "install the package with `pip install --no-build-isolation .` (see README)"
        )
    mismatch = built_for is not None and built_for != running
    try:
        load(str(path))
    except (OSError, RuntimeError) as exc:
        if mismatch:
            raise ImportError(
                f"taylornet: the compiled ops were built for torch {built_for} but torch {running} is "
                f"running, and they do not load ({exc}); {_REBUILD}"
            ) from exc
        raise
    if mismatch:
        warnings.warn(
            f"taylornet: the compiled ops were built for torch {built_for} but torch {running} is running; "
            f"they loaded, but may misbehave; {_REBUILD}",
            RuntimeWarning, stacklevel=3,
        )


def _built_for() -> str | None:
    try:
        return importlib.import_module(f"{__package__}._build_info").TORCH_VERSION
    except ImportError:  # a library built by hand, without the build's record
        return None


_load_library(Path(__file__).with_name(_LIB_NAME), _built_for(), torch.__version__)
ops = torch.ops.taylornet


def cpu_capability(name: str | None = None) -> str:
    """The instruction set the CPU kernels run with: "AVX512", "AVX2" or "DEFAULT" (portable).

    With ``name``, forces that build first (one the CPU supports; "" restores the best), for
    instance to test or time each build on one machine. The environment variable
    ``TAYLORNET_CPU_CAPABILITY`` sets the choice at start-up.
    """
    return ops.cpu_capability(name)


def fused_max_dim(limit: int | str | None = None) -> int:
    """The largest input dimension d that the CPU's fused dual-product kernels take under the current
    instruction set (:func:`cpu_capability`); above it ATen's BLAS computes the products on tiles.

    By default each build keeps its own: 512 on AVX2 and on AVX-512 with an Intel CPU, no limit
    (``sys.maxsize``) on AVX-512 with an AMD CPU and MKL (whose AVX2 kernels run there at about half
    the fused kernels' rate), 0 in the portable build, which has no fused kernels. ``limit`` (a
    d >= 0) sets one limit for every build, for instance 0 to run the BLAS tile path at every
    d >= 1 or to measure the crossover; ``"auto"`` restores the defaults. The environment variable
    ``TAYLORNET_FUSED_MAX_DIM`` (a d or ``auto``) sets the starting choice. Both paths compute the
    same function; they differ in the rounding of the products' sums.
    """
    if limit == "auto":
        limit = -1
    elif limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise TypeError(f"limit: expected an int, 'auto' or None, got {limit!r}")
    elif limit is not None and limit < 0:
        raise ValueError(f"limit: expected a dimension d >= 0 or 'auto', got {limit}")
    return ops.cpu_fused_max_dim(limit)


def saved_cache(limit_bytes: int | None = None) -> tuple[int, int]:
    """(bytes held, limit in bytes) of the cache of the CPU features forward's n x m buffers.

    A CPU forward of :func:`taylornet.taylor_features` takes its output h from this cache, and a
    forward that will be differentiated keeps dh/du (and dh/dz0) for its backward, one n x m buffer
    each, from it too. Once their last tensor is released they go back to the cache, and the next
    forward of the same size takes them again instead of mapping fresh pages (glibc's malloc would
    return them to the system when several are released together, as at the end of a training step:
    thousands of page faults per step, for its own buffers and for those of the layers around them).
    At most 256 MiB are held (the environment variable ``TAYLORNET_SAVED_CACHE_MB`` sets another
    start); ``limit_bytes`` sets the limit now (0: no cache, and what it held is freed).
    """
    if limit_bytes is not None and (isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int)):
        raise TypeError(f"limit_bytes: expected an int or None, got {limit_bytes!r}")
    if limit_bytes is not None and limit_bytes < 0:
        raise ValueError(f"limit_bytes: expected a number of bytes >= 0, got {limit_bytes}")
    held, limit = ops.cpu_saved_cache(limit_bytes)
    return held, limit


def _grad_or_empty(need: bool, like: torch.Tensor, shape) -> torch.Tensor:
    return like.new_empty(shape) if need else like.new_empty((0,))


# ---- fake kernels: shapes only ---------------------------------------------------------------

@torch.library.register_fake("taylornet::features")
def _features_fake(x, w0, w, b0, b, signs, seed, activation, orders, exact):
    return x.new_empty((x.shape[0], w.shape[0]))


@torch.library.register_fake("taylornet::features_backward")
def _features_backward_fake(grad, x, w0, w, b0, b, signs, seed, activation, orders, exact, needs):
    m = w.shape[0]
    return (
        _grad_or_empty(needs[0], x, x.shape),
        _grad_or_empty(needs[1], x, w0.shape),
        _grad_or_empty(needs[2], x, w.shape),
        _grad_or_empty(needs[3] and b0 is not None, x, (m,)),
        _grad_or_empty(needs[4] and b is not None, x, (m,)),
    )


@torch.library.register_fake("taylornet::features_saving")
def _features_saving_fake(x, w0, w, b0, b, signs, seed, activation, orders, exact, need_dz):
    n, m = x.shape[0], w.shape[0]
    return x.new_empty((n, m)), x.new_empty((n, m)), x.new_empty((n, m) if need_dz else (0,))


@torch.library.register_fake("taylornet::features_backward_saved")
def _features_backward_saved_fake(grad, du, dz, x, w0, w, has_b0, has_b, needs):
    m = w.shape[0]
    return (
        _grad_or_empty(needs[0], x, x.shape),
        _grad_or_empty(needs[1], x, w0.shape),
        _grad_or_empty(needs[2], x, w.shape),
        _grad_or_empty(needs[3] and has_b0, x, (m,)),
        _grad_or_empty(needs[4] and has_b, x, (m,)),
    )


@torch.library.register_fake("taylornet::net")
def _net_fake(x, w0, w, a, b0, b, signs, seed, activation, orders, exact, scale):
    return x.new_empty((x.shape[0], a.shape[0]))


@torch.library.register_fake("taylornet::moments")
def _moments_fake(x, w0, w, a, b0, b, activation, orders, exact, scale):
    return x.new_empty((x.shape[0], a.shape[0])), x.new_empty((x.shape[0], a.shape[0]))


def _six_grads_fake(x, w0, w, a, b0, b, needs):
    m = w.shape[0]
    return (
        _grad_or_empty(needs[0], x, x.shape),
        _grad_or_empty(needs[1], x, w0.shape),
        _grad_or_empty(needs[2], x, w.shape),
        _grad_or_empty(needs[3], x, a.shape),
        _grad_or_empty(needs[4] and b0 is not None, x, (m,)),
        _grad_or_empty(needs[5] and b is not None, x, (m,)),
    )


@torch.library.register_fake("taylornet::net_backward")
def _net_backward_fake(grad, x, w0, w, a, b0, b, signs, seed, activation, orders, exact, scale, needs):
    return _six_grads_fake(x, w0, w, a, b0, b, needs)


@torch.library.register_fake("taylornet::moments_backward")
def _moments_backward_fake(gm, gv, x, w0, w, a, b0, b, activation, orders, exact, scale, needs):
    return _six_grads_fake(x, w0, w, a, b0, b, needs)


@torch.library.register_fake("taylornet::philox_signs")
def _philox_signs_fake(seed, m):
    return seed.new_empty((m,), dtype=torch.float32)


@torch.library.register_fake("taylornet::philox")
def _philox_fake(counters, seed):
    return counters.new_empty(counters.shape)


# ---- autograd ---------------------------------------------------------------------------------
# Registered in C++ (csrc/autograd.cpp) for every device: gradients flow to x, w0, w, (a,) b0, b
# through the backward ops; signs and seeds are constants; differentiating a backward op raises.
