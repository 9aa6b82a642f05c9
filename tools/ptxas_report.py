"""Summarize `ptxas -v` output of a build log: registers, spills and shared memory per kernel and arch."""
import re
import sys

entry = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
spill = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
regs = re.compile(r"Used (\d+) registers.*?(\d+) bytes smem")


def kernel_name(mangled: str) -> str:
    m = re.search(r"\d+([a-z_]+_kernel)I(\w+?)EE", mangled)
    if not m:
        return mangled[:60]
    dtype = {"f": "float", "d": "double", "6__half": "half", "13__nv_bfloat16": "bfloat16"}.get(m.group(2), m.group(2))
    return f"{m.group(1)}<{dtype}>"


rows, current, spills = [], None, None
for line in open(sys.argv[1], errors="replace"):
    if (m := entry.search(line)):
        current, spills = (kernel_name(m.group(1)), m.group(2)), None
    elif current and (m := spill.search(line)):
        spills = (int(m.group(1)), int(m.group(2)))
    elif current and (m := regs.search(line)):
        rows.append((*current, int(m.group(1)), *(spills or (0, 0)), int(m.group(2))))
        current = None
print(f"{'kernel':36} {'arch':6} {'regs':>4} {'spill st':>8} {'spill ld':>8} {'smem':>6}")
for row in sorted(set(rows)):
    print(f"{row[0]:36} {row[1]:6} {row[2]:4d} {row[3]:8d} {row[4]:8d} {row[5]:6d}")
if not rows:
    print("no ptxas report found")
