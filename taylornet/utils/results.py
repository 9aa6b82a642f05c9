"""Result files: JSON (valid: NaN and infinities become null), CSV, and what the numbers depend on
(the machine, the software). Files are written atomically, so an interrupted run leaves the last
complete version."""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import socket
import sys
from pathlib import Path

__all__ = [
    "CsvStream", "available_memory", "jsonable", "machine_info", "software_info", "total_memory", "write_csv",
    "write_json",
]


def jsonable(value):
    """``value`` with NaN / infinities as None, paths and other objects as strings, tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _atomic_write(path: Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: Path, document) -> Path:
    """Writes ``document`` as indented JSON."""
    return _atomic_write(path, json.dumps(jsonable(document), indent=1) + "\n")


def _cell(value):
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value)) if all(isinstance(x, (str, int, float)) for x in value) else None
    return None if isinstance(value, dict) else value


def write_csv(path: Path, rows: list[dict], first: tuple[str, ...] = ()) -> Path:
    """Writes ``rows`` with the columns ``first``, then every other key in order of appearance; lists
    of scalars are joined with "+", nested dicts left out."""
    keys = list(first)
    for r in rows:
        keys += [k for k in r if k not in keys and _cell(r[k]) is not None]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _cell(v) for k, v in r.items()})
    os.replace(tmp, path)
    return path


class CsvStream:
    """A CSV file written row by row, each row flushed as it comes, so that an interrupted run keeps
    the rows that finished (unlike ``write_csv``, which writes a whole table at once). Cells as in
    ``write_csv``; keys outside ``fieldnames`` are left out."""

    def __init__(self, path: Path, fieldnames: list[str]):
        self.path = Path(path)
        self._file = open(self.path, "w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=list(fieldnames), extrasaction="ignore")
        self._writer.writeheader()
        self._file.flush()

    def write(self, row: dict) -> None:
        self._writer.writerow({k: _cell(v) for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _first_line(path: str, prefix: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line
    except OSError:
        return None
    return None


def _meminfo_bytes(field: str) -> int | None:
    line = _first_line("/proc/meminfo", field + ":")
    return int(line.split()[1]) * 1024 if line else None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def machine_info(device: str = "cpu") -> dict:
    """Host, CPU, memory, load and (for ``device="cuda"``) the GPU."""
    import torch

    line = _first_line("/proc/cpuinfo", "model name")
    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": line.split(":", 1)[1].strip() if line else (platform.processor() or platform.machine()),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_total_bytes": _meminfo_bytes("MemTotal"),
        "memory_available_bytes": _meminfo_bytes("MemAvailable"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "transparent_hugepage": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info["gpu"] = {
            "name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_bytes": props.total_memory, "multiprocessors": props.multi_processor_count,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        }
    return info


def available_memory(device: str) -> int | None:
    """Bytes that may be used now: free device memory (CUDA) or MemAvailable (CPU)."""
    import torch

    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    return _meminfo_bytes("MemAvailable")


def total_memory(device: str) -> int | None:
    """The device's memory (CUDA) or the machine's (CPU), bytes."""
    import torch

    if device == "cuda":
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    return _meminfo_bytes("MemTotal")


def software_info() -> dict:
    """Python, torch (and its math libraries), taylornet, numpy when present."""
    import torch

    import taylornet

    try:  # optional: recorded when present
        import numpy

        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = None
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_git": getattr(torch.version, "git_version", None),
        "taylornet": taylornet.__version__,
        "taylornet_path": str(Path(taylornet.__file__).parent),
        "numpy": numpy_version,
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "openmp": torch.backends.openmp.is_available(),
        "parallel_info": torch.__config__.parallel_info(),
    }
