#!/usr/bin/env bash
# Compile and link the CUDA extension without a GPU: a CUDA build of torch in .venv-cuda, every .cu
# through plain nvcc -std=c++20 for sm_80 and sm_90a, a report per kernel and architecture (ptxas:
# registers, spills, stack frame; SASS: instructions, local loads and stores, calls), then the
# library loaded into that torch with its CUDA kernels registered. Fails on any error, and where a
# hot kernel uses local memory or calls out of line.
#   CUDA_HOME    toolkit root (default /usr/local/cuda-13.0, else the directory of nvcc)
#   TORCH_CUDA   torch requirement for the environment (default torch==2.14.1)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV_CUDA:-.venv-cuda}
TORCH_CUDA=${TORCH_CUDA:-torch==2.14.1}
if [ -z "${CUDA_HOME:-}" ]; then
  if [ -x /usr/local/cuda-13.0/bin/nvcc ]; then CUDA_HOME=/usr/local/cuda-13.0
  else CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")"); fi
fi
export CUDA_HOME CUDACXX="$CUDA_HOME/bin/nvcc"
# 9.0a: -gencode=arch=compute_90a,code=sm_90a, the target of the wgmma kernels (the entry points of
# other targets compile too: try TORCH_CUDA_ARCH_LIST="8.0;9.0;9.0a").
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0a"}

if [ ! -f "$VENV/.created" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "$TORCH_CUDA" numpy ninja "cmake>=3.26"
  touch "$VENV/.created"
fi
PY="$PWD/$VENV/bin/python"
SP=$("$PY" -c "import site; print(site.getsitepackages()[0])")
# cuobjdump (and the nvdisasm it calls) for the SASS columns of the report: the toolkit may lack them.
if [ ! -x "$SP/nvidia/cu13/bin/cuobjdump" ] || [ ! -x "$SP/nvidia/cu13/bin/nvdisasm" ]; then
  "$VENV/bin/pip" install -q "nvidia-cuda-cuobjdump>=13,<14" "nvidia-cuda-nvdisasm>=13,<14"
fi
export PATH="$PWD/$VENV/bin:$SP/nvidia/cu13/bin:$PATH"  # its cmake, ninja, cuobjdump, nvdisasm
mkdir -p build
# The CUDA wheels carry the libraries that a minimal toolkit lacks (nvrtc and friends).
cmake -S . -B build/cuda -G Ninja -DPython_EXECUTABLE="$PY" -DTAYLORNET_CUDA=ON \
  -DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME" -DCUDAToolkit_ROOT="$CUDA_HOME" \
  -DCUDA_CUDART_LIBRARY="$CUDA_HOME/lib64/libcudart.so" \
  -DCUDA_nvrtc_LIBRARY="$SP/nvidia/cu13/lib/libnvrtc.so.13" \
  > build/cuda-configure.log 2>&1 || { cat build/cuda-configure.log; exit 1; }
if ! cmake --build build/cuda -j "$(nproc)" > build/cuda-build.log 2>&1; then
  grep -E "error|FAILED" build/cuda-build.log | head -50
  echo "CUDA build failed (build/cuda-build.log)"
  exit 1
fi

# The table of every kernel (also in build/cuda-kernels.txt); fails if a hot kernel uses local
# memory (stack frame, spills, LDL/STL) or calls out of line.
if ! python3 tools/ptxas_report.py --check build/cuda-build.log \
    build/cuda/CMakeFiles/taylornet_cuda.dir/csrc/cuda/*.o | tee build/cuda-kernels.txt; then
  echo "CUDA kernel check failed (build/cuda-kernels.txt)"
  exit 1
fi
ls -l build/cuda/libtaylornet_ops.so | awk '{print "libtaylornet_ops.so: " $5 " bytes"}'
# The epilogue's instructions per element for each specialised series (docs/cuda.md's performance model).
python3 tools/epilogue_cost.py --arch sm_90 --out build/epilogue-cost.txt

"$PY" - <<'PY'
import torch
torch.ops.load_library("build/cuda/libtaylornet_ops.so")
ops = ["features", "features_backward", "net", "net_backward", "moments", "moments_backward"]
missing = [o for o in ops if not torch._C._dispatch_has_kernel_for_dispatch_key(f"taylornet::{o}", "CUDA")]
assert not missing, f"CUDA kernels not registered for {missing}"
print(f"CUDA build OK: torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"{len(ops)} ops with CUDA kernels")
PY
