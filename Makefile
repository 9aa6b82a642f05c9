# Entry points, each doing all set-up on a fresh machine:
#   make demo   - train a small sign-randomized quadratic Taylor model (the main job)
#   make test   - run the test suite
#   make cuda-check - compile and link the CUDA kernels against a CUDA build of torch (no GPU needed)
#   make bench  - the quick benchmark of the fused ops against autograd and torch.compile
# TORCH selects the torch installed into the virtual environment; TORCH= (empty) keeps the torch
# already installed for $(PYTHON) (the environment then sees the system site-packages).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
BUILD_DEPS := numpy tqdm matplotlib scikit-learn scikit-build-core pybind11 ninja "cmake>=3.26" pytest pytest-benchmark
SOURCES := $(shell find csrc taylornet cmake -type f -name '*.*' -not -name '*.so' -not -path '*/__pycache__/*') \
           CMakeLists.txt pyproject.toml

.PHONY: demo test bench cuda-check install clean

demo: $(VENV)/.installed
	$(PY) -P -m taylornet demo

test: $(VENV)/.installed
	$(PY) -P -m pytest tests -q

bench: $(VENV)/.installed
	$(PY) -P -m taylornet bench --quick

install: $(VENV)/.installed

# Compile and link the CUDA kernels against a CUDA build of torch (no GPU needed).
cuda-check:
	bash tools/cuda_build_check.sh

$(VENV)/.created:
	$(PYTHON) -m venv $(if $(TORCH),,--system-site-packages) $(VENV)
	$(PY) -m pip install -q $(TORCH) $(BUILD_DEPS)
	touch $@

$(VENV)/.installed: $(VENV)/.created $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation --no-deps .
	touch $@

clean:
	rm -rf build $(VENV) .venv-cuda
