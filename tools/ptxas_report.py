"""Per kernel and architecture: registers, spills, stack (the kernel's cumulative stack size, its
out-of-line callees included) and shared memory from the `ptxas -v` lines of a build log, and from
the SASS of the objects (cuobjdump -sass, which calls nvdisasm) the instruction count, the
local-memory loads and stores (LDL, STL) that a stack costs at run time and the out-of-line
subroutines (counted by their returns, RET: a subroutine is what a CALL returns from; ptxas also
emits CALLs to the next instruction as a branch idiom, which are not counted), and the tensor-core
instructions HMMA (mma.sync, wmma), LDSM (ldmatrix) and HGMMA (wgmma), and the copy engine's tensor
loads UTMALDG (cp.async.bulk.tensor). Out-of-line device functions
(compiled once per calling kernel) get a row with the largest of their copies' figures.

    python3 tools/ptxas_report.py [--check] BUILD_LOG [OBJECT ...]

--check: exit with status 1, naming kernel and architecture, if a hot kernel (every kernel of the
features_forward, neuron_sum and sample_sum families) has a stack frame, spills, local loads or
stores, or out-of-line subroutines, or if a kernel of the mma.sync mainloop (tag MmaLoop) lacks
HMMA or LDSM instructions (or there is no such kernel for sm_80), or if a kernel of the wgmma
mainloop (the *_wgmma_kernel, *_wgmma_overlap_kernel, *_wgmma_fallback_kernel and *_pingpong_kernel
entry points) lacks
HGMMA, UTMALDG (but the fallback kernels, whose threads copy) or static shared memory in its sm_90a
code (or there is no such kernel where the build has sm_90a code), or has static shared memory in the
entry points of other targets (the launch layer tells the sm_90a code from them by it), or if
ptxas serialised the wgmmas of any kernel (its "wgmma.mma_async instructions are serialized" warnings,
C7510-C7520; KNOWN_SERIALISED names the exceptions), or if an overlap kernel (*_wgmma_overlap_kernel)
does not run stage 2 under its first wgmmas: in its SASS, after the first group of HGMMA instructions,
an HMMA must come before the first WARPGROUP.DEPBAR (the wait for them), or if a ping-pong kernel
(*_pingpong_kernel) hands the turn to the other consumer nowhere after issuing its wgmmas (no BAR.ARV
after an HGMMA in its SASS). It then also needs the SASS
(cuobjdump on PATH and the objects).
Without cuobjdump on PATH (or without objects) the SASS columns read "-".
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import defaultdict

ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+a?)'")
PROPS = re.compile(r"Function properties for (\w+)")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers")
SMEM = re.compile(r"(\d+) bytes smem")
CUMULATIVE = re.compile(r"(\d+) bytes cumulative stack size")
ARCH = re.compile(r"for '(sm_\d+a?)'")
SASS_ARCH = re.compile(r"code for (sm_\d+a?)")
SASS_FUNC = re.compile(r"Function : (\S+)")
SASS_INSN = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]+)?")
SERIALISED = re.compile(r"\((C75\d\d)\) Potential Performance Loss: wgmma\.mma_async instructions are serialized"
                        r".*in the function '(\w+)'")
# A wait for the wgmmas that ptxas inserted (C7517) where it cannot prove none is in flight: listed in
# the summary, not a failure (docs/cuda.md: the overlap kernels' one, at the tile loop's back edge).
WAIT_INJECTED = re.compile(r"\(C7517\) warpgroup\.wait is injected .* in function '(\w+)'")


def demangle(names: list[str]) -> dict[str, str]:
    """Mangled -> short readable names: "sample_sum_kernel<double>", "fields_at<float, 4>"."""
    names = sorted(set(names))
    plain = names
    if shutil.which("c++filt") and names:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
        plain = out[: len(names)] if len(out) >= len(names) else names
    short = {}
    for mangled, text in zip(names, plain):
        text = re.sub(r"^void ", "", text).replace("tn::cuda::", "").replace("tn::", "")
        depth, cut = 0, len(text)
        for i, ch in enumerate(text):  # drop the parameter list: the first "(" outside template brackets
            depth += ch == "<"
            depth -= ch == ">"
            if ch == "(" and depth == 0:
                cut = i
                break
        short[mangled] = text[:cut].replace("__nv_bfloat16", "bfloat16").replace("__half", "half")
    return short


def ptxas_rows(log_path: str) -> dict[tuple[str, str], dict]:
    rows: dict[tuple[str, str], dict] = {}
    arch, entry, props = None, None, None
    for line in open(log_path, errors="replace"):
        if (m := SERIALISED.search(line)):  # names the function, not the architecture: wgmma is sm_90a's
            rows.setdefault((m.group(2), "sm_90a"), {}).setdefault("serialised", set()).add(m.group(1))
        if (m := WAIT_INJECTED.search(line)):
            row = rows.setdefault((m.group(1), "sm_90a"), {})
            row["waits_injected"] = row.get("waits_injected", 0) + 1
        if (m := ENTRY.search(line)):
            entry, arch = m.group(1), m.group(2)
            rows.setdefault((entry, arch), {})
        elif (m := ARCH.search(line)):
            arch = m.group(1)
        if (m := PROPS.search(line)):
            props = m.group(1)
        elif props and (m := FRAME.search(line)):
            if arch:
                row = rows.setdefault((props, arch), {})
                for key, value in zip(("stack", "spill_st", "spill_ld"), map(int, m.groups())):
                    row[key] = max(row.get(key, 0), value)  # a device function: its largest copy
            props = None
        if entry and (m := USED.search(line)):
            row = rows[(entry, arch)]
            row["regs"] = int(m.group(1))
            if (s := SMEM.search(line)):
                row["smem"] = int(s.group(1))
            if (c := CUMULATIVE.search(line)):
                row["stack"] = int(c.group(1))
            entry = None
    return rows


def sass_counts(objects: list[str]) -> dict[tuple[str, str], dict] | None:
    tool = shutil.which("cuobjdump")
    if not tool or not objects:
        return None
    # "under": whether an HMMA comes after the first group of HGMMAs and before the first
    # WARPGROUP.DEPBAR (None until decided; "group" marks the first group's HGMMAs seen).
    counts: dict[tuple[str, str], dict] = defaultdict(
        lambda: {"insns": 0, "ldl": 0, "stl": 0, "ret": 0, "hmma": 0, "ldsm": 0, "hgmma": 0, "utmaldg": 0,
                 "group": False, "under": None, "handoff": False})
    for obj in objects:
        run = subprocess.run([tool, "-sass", obj], capture_output=True, text=True)
        if run.returncode != 0:
            print(f"cuobjdump -sass {obj} failed: {run.stderr.strip()[-300:]}")
            return None
        arch, func = None, None
        for line in run.stdout.splitlines():
            if (m := SASS_ARCH.search(line)):
                arch = m.group(1)
            elif (m := SASS_FUNC.search(line)):
                func = m.group(1)
            elif func and (m := SASS_INSN.search(line)):
                c = counts[(func, arch)]
                op = m.group(1)
                c["insns"] += op != "NOP"
                c["ldl"] += op == "LDL"
                c["stl"] += op == "STL"
                c["ret"] += op == "RET"
                c["hmma"] += op == "HMMA"
                c["ldsm"] += op == "LDSM"
                c["hgmma"] += op == "HGMMA"
                c["utmaldg"] += op == "UTMALDG"
                # a named barrier's arrive after wgmmas were issued (the ping-pong's hand-off)
                c["handoff"] |= op == "BAR" and (m.group(2) or "").startswith(".ARV") and c["hgmma"] > 0
                if c["under"] is None:
                    if op == "HGMMA":
                        c["group"] = True
                    elif c["group"] and op == "HMMA":
                        c["under"] = True
                    elif c["group"] and op == "WARPGROUP" and m.group(2) == ".DEPBAR":
                        c["under"] = False
    return counts


HOT = re.compile(r"^(features_forward|neuron_sum|sample_sum)\w*kernel<")
MMA_SYNC = re.compile(r"^\w+_tc_kernel<MmaLoop,")  # the mma.sync mainloop's kernels
WGMMA = re.compile(r"^\w+_(wgmma(_overlap|_fallback)?|pingpong)_kernel<")  # the wgmma mainloop's kernels
FALLBACK = re.compile(r"^\w+_wgmma_fallback_kernel<")  # the threads' copies, no tensor copies
OVERLAP = re.compile(r"^\w+_wgmma_overlap_kernel<")  # stage 1 under the previous tile's stage 2
PINGPONG = re.compile(r"^\w+_pingpong_kernel<")  # two consumer warpgroups taking turns
# Serialised wgmmas known and harmless: the reductions of tanh (0,) (series 0) on the threads'
# copies, where ptxas finds registers short for the pipeline (C7511); those kernels wait for each
# k chunk's wgmmas before the next anyway (docs/cuda.md). Every other serialisation fails the check.
KNOWN_SERIALISED = re.compile(r"^(neuron_sum|sample_sum)_wgmma_fallback_kernel<(bfloat16|half), 0>$")


def main() -> None:
    args = sys.argv[1:]
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    rows = ptxas_rows(args[0])
    sass = sass_counts(args[1:])
    names = demangle([name for name, _ in rows] + ([name for name, _ in sass] if sass else []))
    keys = sorted(set(rows) | (set(sass) if sass else set()), key=lambda k: (names.get(k[0], k[0]), k[1]))
    width = max([44] + [len(names.get(k[0], k[0])) for k in keys])
    print(f"{'kernel / device function':{width}} {'arch':6} {'regs':>4} {'spill st':>8} {'spill ld':>8} {'stack':>6} "
          f"{'smem':>6} {'insns':>6} {'LDL':>5} {'STL':>5} {'RET':>5} {'HMMA':>5} {'LDSM':>5} {'HGMMA':>5} "
          f"{'UTMALDG':>7}")
    dash = "-"
    with_stack = with_local = 0
    problems = []
    mma_sync_sm80 = wgmma_sm90a = 0
    has_sm90a = any(arch == "sm_90a" for _, arch in keys)
    for key in keys:
        r = rows.get(key, {})
        s = sass.get(key) if sass else None
        name = names.get(key[0], key[0])
        cells = [r.get("regs", dash), r.get("spill_st", dash), r.get("spill_ld", dash), r.get("stack", dash),
                 r.get("smem", dash)]
        cells += ([s["insns"], s["ldl"], s["stl"], s["ret"], s["hmma"], s["ldsm"], s["hgmma"], s["utmaldg"]] if s
                  else [dash] * 8)
        with_stack += bool(r.get("stack"))
        with_local += bool(s and (s["ldl"] or s["stl"]))
        print(f"{name:{width}} {key[1]:6} {cells[0]:>4} {cells[1]:>8} {cells[2]:>8} "
              f"{cells[3]:>6} {cells[4]:>6} {cells[5]:>6} {cells[6]:>5} {cells[7]:>5} {cells[8]:>5} {cells[9]:>5} "
              f"{cells[10]:>5} {cells[11]:>5} {cells[12]:>7}")
        if check and HOT.match(name):
            what = [f"{label} {value}" for label, value in (
                ("bytes of stack frame", r.get("stack", 0)), ("bytes of spill stores", r.get("spill_st", 0)),
                ("bytes of spill loads", r.get("spill_ld", 0)), ("LDL", s["ldl"] if s else 0),
                ("STL", s["stl"] if s else 0), ("out-of-line subroutines (RET)", s["ret"] if s else 0)) if value]
            if s and MMA_SYNC.match(name):
                mma_sync_sm80 += key[1] == "sm_80"
                what += [f"no {op} instructions" for op, n in (("HMMA", s["hmma"]), ("LDSM", s["ldsm"])) if not n]
            if s and WGMMA.match(name):
                if key[1] == "sm_90a":
                    wgmma_sm90a += 1
                    what += ["no HGMMA instructions"] * (not s["hgmma"])
                    if not FALLBACK.match(name):
                        what += ["no UTMALDG instructions (tensor copies)"] * (not s["utmaldg"])
                    what += ["no static shared memory (the sign of its sm_90a code)"] * (not r.get("smem"))
                    if OVERLAP.match(name) and not s["under"]:
                        what.append("no HMMA between its first HGMMAs and the wait for them (stage 1 not "
                                    "overlapped)")
                    if PINGPONG.match(name) and not s["handoff"]:
                        what.append("no BAR.ARV after its HGMMAs (the other consumer's turn never handed over)")
                elif r.get("smem"):
                    what.append("static shared memory outside sm_90a (read as sm_90a code)")
            if r.get("serialised") and not (KNOWN_SERIALISED.match(name) and r["serialised"] == {"C7511"}):
                what.append("wgmmas serialised by ptxas (" + ", ".join(sorted(r["serialised"])) + ")")
            if what:
                problems.append(f"{name} ({key[1]}): " + ", ".join(what))
    if not keys:
        print("no ptxas report found")
        sys.exit(1 if check else 0)
    print(f"{len(keys)} rows: {with_stack} with a stack frame, "
          + (f"{with_local} with local loads or stores in their SASS" if sass is not None
             else "SASS not read (no cuobjdump on PATH, or no objects given)"))
    waits = sorted(names.get(k[0], k[0]) for k in keys if rows.get(k, {}).get("waits_injected"))
    print(f"{len(waits)} kernels with a wgmma wait injected by ptxas (C7517)"
          + (": " + ", ".join(waits) if waits else ""))
    if check:
        if sass is None:
            print("--check needs the SASS: cuobjdump on PATH and the objects")
            sys.exit(1)
        if not mma_sync_sm80:
            problems.append("no kernel of the mma.sync mainloop (MmaLoop) for sm_80 in the SASS")
        if has_sm90a and not wgmma_sm90a:
            problems.append("no kernel of the wgmma mainloop for sm_90a in the SASS")
        if problems:
            print(f"{len(problems)} problems: hot kernels must keep everything in registers (no local memory, "
                  "no out-of-line subroutines), the mma.sync mainloop's kernels must run HMMA and LDSM, the "
                  "wgmma mainloop's HGMMA and (but the fallback kernels) UTMALDG, unserialised, the overlap kernels "
                  "stage 2 under stage 1, the ping-pong kernels a hand-off after their wgmmas:")
            for line in problems:
                print(f"  {line}")
            sys.exit(1)
        print("hot kernels: no stack frame, no spills, no local loads or stores, no out-of-line subroutines; "
              f"the mma.sync mainloop's kernels ({mma_sync_sm80} for sm_80) all run HMMA and LDSM"
              + (f"; the wgmma mainloop's ({wgmma_sm90a} for sm_90a) all run HGMMA (and UTMALDG), none serialised "
                 "(but KNOWN_SERIALISED), the overlap kernels with stage 2 under their first wgmmas, the ping-pong "
                 "kernels with a hand-off after theirs"
                 if has_sm90a else ""))


if __name__ == "__main__":
    main()
