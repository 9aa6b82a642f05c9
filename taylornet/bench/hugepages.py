"""glibc's huge-page malloc for a benchmark run.

On CPU the reference implementations allocate fresh n x m temporaries at every call; glibc serves
them with mmap and the kernel zero-fills every 4 KiB page on first touch. With
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35) malloc advises transparent huge pages for
its mappings, so the same temporaries fault in 2 MiB pages: the baselines' best configuration. The
tunable is read when the process starts, so the benchmark restarts itself with it.
"""
from __future__ import annotations

import os
import sys

TUNABLE = "glibc.malloc.hugetlb=1"


def enabled() -> bool:
    return TUNABLE in os.environ.get("GLIBC_TUNABLES", "").split(":")


def reexec_with_hugepages() -> None:
    """Re-executes this process with the tunable added; returns when it is already set."""
    if enabled():
        return
    tunables = os.environ.get("GLIBC_TUNABLES")
    env = dict(os.environ, GLIBC_TUNABLES=f"{tunables}:{TUNABLE}" if tunables else TUNABLE)
    sys.stdout.flush()
    sys.stderr.flush()
    # The same command through the interpreter, however it was started (`python -m taylornet` or the
    # `taylornet` console script: the first element of an argument list is only the program's name).
    os.execve(sys.executable, [sys.executable, "-P", "-m", "taylornet", *sys.argv[1:]], env)


def anon_huge_bytes() -> int | None:
    """AnonHugePages of this process (bytes), to confirm that huge pages are in use."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
