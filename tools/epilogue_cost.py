"""SASS instructions per element of the tensor-core epilogue, per specialised series and fields.

Compiles tools/epilogue_probe.cu for one architecture (nvcc from CUDA_HOME or PATH, cuobjdump on
PATH), counts each probe kernel's instructions (NOPs excluded) minus those of the baseline kernel
(the same loads and stores), and divides by the 4 elements a thread handles. The count is static
(every specialised epilogue is straight-line code) and includes the special-function-unit
instructions (MUFU: ex2 and rcp for tanh and the sigmoids); docs/cuda.md's performance model reads it.

    python3 tools/epilogue_cost.py [--arch sm_90] [--out build/epilogue-cost.txt]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ptxas_report import SASS_FUNC, SASS_INSN  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROBE = re.compile(r"_Z\d+(forward|backward_w|backward_w_w0)_(\d+)N")
FIELDS = {"forward": "h (forward)", "backward_w": "G (dW)", "backward_w_w0": "G, G0 (dW, dW0)"}


def series_names() -> list[str]:
    """The entries of kSpecialised in csrc/taylornet/specialised.h, as written there."""
    text = (ROOT / "csrc/taylornet/specialised.h").read_text()
    body = text[text.index("kSpecialised[] = {"):text.index("};", text.index("kSpecialised[] = {"))]
    out = []
    for act, orders, exact in re.findall(r"\{Act::k(\w+), (0b[01]+|0), (true|false)\}", body):
        bits = int(orders, 2)
        orders_text = "exact" if exact == "true" else str(tuple(k for k in range(8) if bits >> k & 1))
        out.append(f"{act.lower()} {orders_text}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    home = os.environ.get("CUDA_HOME")
    nvcc = str(Path(home) / "bin" / "nvcc") if home else shutil.which("nvcc")
    cuobjdump = shutil.which("cuobjdump")
    if not nvcc or not cuobjdump:
        print("epilogue_cost: needs nvcc (CUDA_HOME or PATH) and cuobjdump on PATH")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "probe.cubin"
        num = args.arch.removeprefix("sm_")
        subprocess.run([nvcc, "-cubin", f"-gencode=arch=compute_{num},code={args.arch}", "-O3", "-std=c++20",
                        f"-I{ROOT / 'csrc'}", str(ROOT / "tools/epilogue_probe.cu"), "-o", str(cubin)], check=True)
        sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    counts: dict[str, list[int]] = {}
    func = None
    for line in sass.splitlines():
        if (m := SASS_FUNC.search(line)):
            func = m.group(1)
            counts[func] = [0, 0]
        elif func and (m := SASS_INSN.search(line)):
            op = m.group(1)
            counts[func][0] += op != "NOP"
            counts[func][1] += op == "MUFU"
    base = next(v[0] for k, v in counts.items() if "baseline" in k)
    names = series_names()
    table = {}
    for name, (n, mufu) in counts.items():
        if (m := PROBE.match(name)):
            # at least 0: a field that is a constant (tanh (0,)'s dh/du) skips loads the baseline makes
            table[(int(m.group(2)), m.group(1))] = (max(0, n - base) / 4, mufu / 4)
    lines = [f"tensor-core epilogue, SASS instructions per element ({args.arch}; MUFU among them)",
             f"{'series':22} " + " ".join(f"{FIELDS[f]:>18}" for f in FIELDS)]
    for s, label in enumerate(names):
        cells = [table.get((s, f)) for f in FIELDS]
        lines.append(f"{label:22} " + " ".join(f"{c[0]:11.1f} ({c[1]:.0f} MUFU)" if c else f"{'-':>18}"
                                                 for c in cells))
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
