#!/usr/bin/env bash
# GPU validation in one run, on a machine with an NVIDIA GPU, nvcc and its own torch (no internet):
# build the extension with its CUDA kernels, run the CUDA tests, run the GPU benchmark of the
# CUDA targets (float32 and bf16, then float32 with TF32, then each mainloop on the target case and on
# the features forward, then the performance model's cases), and write results.json plus the logs into OUTDIR. Each step has its own
# time limit (480 s in all), a failed step does not stop the next, and results.json is rewritten after
# every step, so a run cut short still reports the steps it finished.
#   bench/gpu_check.sh OUTDIR
set -uo pipefail
OUT=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # absolute, before changing directory
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# Only the architecture of this GPU: the build is the first thing that must fit in the time.
ARCH=$(python3 -c "import torch; p = torch.cuda.get_device_capability(); print(f'{p[0]}.{p[1]}')" 2>/dev/null || echo "9.0")
[ "$ARCH" = "9.0" ] && ARCH=9.0a  # Hopper: sm_90a, with the wgmma kernels
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH}
START=$(date +%s)
# The device and torch, once (the summary after each step does not import torch again).
python3 - "$OUT/device.json" <<'PY' || true
import json, sys
info = {}
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0))
except Exception as exc:  # the summary is written whatever failed
    info["torch_error"] = repr(exc)
json.dump(info, open(sys.argv[1], "w"))
PY
# results.json from the steps so far (called after every step).
summarize() {
  python3 - "$OUT" "$START" <<'PY'
import json, os, sys, time, glob
out, start = sys.argv[1], int(sys.argv[2])
steps = dict(line.strip().split("=") for line in open(os.path.join(out, "steps.env")) if "=" in line)
info = {"steps": {k: int(v) for k, v in steps.items()}, "seconds": int(time.time()) - start}
if os.path.exists(os.path.join(out, "device.json")):
    info.update(json.load(open(os.path.join(out, "device.json"))))
for key, name in (("tests_host", "tests-host.xml"), ("tests", "tests.xml")):
    path = os.path.join(out, name)
    if os.path.exists(path):
        import xml.etree.ElementTree as ET
        suite = ET.parse(path).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        info[key] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
info["bench"] = sorted(glob.glob(os.path.join(out, "bench", "*.json")))
for key, name in (("mainloops", "mainloops.json"), ("mainloops_features", "mainloops-features.json")):
    if os.path.exists(os.path.join(out, name)):
        info[key] = json.load(open(os.path.join(out, name))).get("mainloops")
json.dump(info, open(os.path.join(out, "results.json"), "w"), indent=2)
PY
}
status() { echo "$1=$2" >> "$OUT/steps.env"; summarize; }
: > "$OUT/steps.env"

echo "== build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
timeout 160 python3 -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1
status build $?
# Registers, spills, stack frames per kernel (and the SASS counts where cuobjdump is on PATH).
python3 tools/ptxas_report.py "$OUT/build.log" $(find build -name 'taylor_*.cu.o' 2>/dev/null) > "$OUT/ptxas.txt" 2>&1 || true
tail -1 "$OUT/ptxas.txt"

# The host path first (no synchronisation, CUDA graphs, reduce-overhead, the mainloop switch): it is
# short and is what no CPU test can show; then the kernels' accuracy matrix.
HOST_TESTS="synchronizes or invalid_signs or cuda_graph or reduce_overhead or mainloop"
echo "== CUDA tests: the host path"
timeout 50 python3 -P -m pytest tests/test_cuda.py -q -p no:cacheprovider -k "$HOST_TESTS" \
  --junitxml="$OUT/tests-host.xml" > "$OUT/tests-host.log" 2>&1
status tests_host $?
tail -5 "$OUT/tests-host.log"

echo "== CUDA tests: the kernels"
timeout 95 python3 -P -m pytest tests/test_cuda.py -q -p no:cacheprovider -k "not ($HOST_TESTS)" \
  --junitxml="$OUT/tests.xml" > "$OUT/tests.log" 2>&1
status tests $?
tail -5 "$OUT/tests.log"

echo "== benchmark"
timeout 70 python3 -P -m taylornet bench --preset cuda-target --repeats 3 --out "$OUT/bench" --no-progress \
  > "$OUT/bench.log" 2>&1
status bench $?
tail -25 "$OUT/bench.log"

echo "== benchmark, float32 with TF32 (tensor-core kernels against TF32 baselines)"
# torch.compile's default mode here: max-autotune's search would not fit in the remaining time.
timeout 35 python3 -P -m taylornet bench --preset cuda-target --dtypes float32 --tf32 --no-width-sweep \
  --compile-mode default --repeats 3 --out "$OUT/bench" --no-progress > "$OUT/bench-tf32.log" 2>&1
status bench_tf32 $?
tail -8 "$OUT/bench-tf32.log"

echo "== the mainloops on the target case (TAYLORNET_CUDA_MAINLOOP), each against SIMT"
# auto is wgmma on an H200 built for sm_90a: its slot goes to wgmma without the overlapping stage 1
# (+serial) and to wgmma staging with cp.async.
timeout 25 python3 -P bench/bench_mainloops.py --repeats 3 --mainloops simt wgmma wgmma+serial wgmma+cp.async mma wmma \
  --out "$OUT/mainloops.json" > "$OUT/mainloops.log" 2>&1
status mainloops $?
cat "$OUT/mainloops.log"

echo "== the features forward: wgmma with tensor copies, with cp.async and warp-specialised (ping-pong), mma"
timeout 15 python3 -P bench/bench_mainloops.py --op features --m 65536 --repeats 3 \
  --mainloops simt wgmma wgmma+cp.async wgmma+pingpong mma --out "$OUT/mainloops-features.json" \
  > "$OUT/mainloops-features.log" 2>&1
status mainloops_features $?
cat "$OUT/mainloops-features.log"

echo "== performance model check: d = 32, 128, 512, tanh order 2 and relu order 1, fused op only"
# The cases of docs/cuda.md's performance model; relu's epilogue is almost nothing, so tanh minus
# relu places the epilogue's time, and relu itself the products' and contractions'.
MODEL="--device cuda --ops net_fb --n 16384 --dims 32 128 512 --widths 262144 --dtypes bfloat16 --impls taylornet"
MODEL="$MODEL --no-width-sweep --repeats 3 --out $OUT/bench --no-progress"
timeout 30 bash -c "python3 -P -m taylornet bench $MODEL --orders 2 --activations tanh --tag model-tanh-cuda && \
  python3 -P -m taylornet bench $MODEL --orders 1 --activations relu --tag model-relu-cuda" > "$OUT/bench-model.log" 2>&1
status bench_model $?
grep -A3 "net fwd+bwd" "$OUT/bench-model.log" | grep -v "^--" | head -20
cat "$OUT/results.json"
