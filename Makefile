# Entry points, each doing all set-up on a fresh machine:
#   make demo   - train a small sign-randomized quadratic Taylor model (the main job)
#   make test   - run the whole test suite (what CI runs)
#   make test-quick - the suite without the tests marked slow, emulator or distributed (about 1/4 of the time)
#   make lint   - ruff over the Python sources
#   make cuda-check - compile and link the CUDA kernels against a CUDA build of torch (no GPU needed)
#   make bench  - the quick benchmark of the fused ops against autograd and torch.compile
# TORCH selects the torch installed into the virtual environment; TORCH= (empty) keeps the torch
# already installed for $(PYTHON) (the environment then sees the system site-packages).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
# Everything the tests, the demo, the benchmark and the experiments need (the extras of pyproject.toml),
# the build tools, ruff and pytest-cov.
BUILD_DEPS := numpy tqdm matplotlib scikit-learn scikit-build-core pybind11 ninja "cmake>=3.26" pytest \
              pytest-benchmark pytest-cov ruff
# CuTe's headers (tests/test_cute_layouts.py holds the kernels' layouts against CuTe's): the wheel
# installed without its Python dependencies, which the headers do not need.
CUTE_HEADERS := nvidia-cutlass==4.2.0.0
SOURCES := $(shell find csrc taylornet cmake -type f -name '*.*' -not -name '*.so' -not -path '*/__pycache__/*') \
           CMakeLists.txt pyproject.toml

.PHONY: demo test test-quick lint bench cuda-check install clean

demo: $(VENV)/.installed
	$(PY) -P -m taylornet demo

test: $(VENV)/.installed
	$(PY) -P -m pytest tests -q

test-quick: $(VENV)/.installed
	$(PY) -P -m pytest tests -q -m "not slow and not emulator and not distributed"

lint: $(VENV)/.created
	$(PY) -m ruff --version > /dev/null 2>&1 || $(PY) -m pip install -q ruff
	$(PY) -m ruff check taylornet tests bench examples tools

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

$(VENV)/.cute-headers: $(VENV)/.created
	$(PY) -m pip install -q --no-deps $(CUTE_HEADERS)
	touch $@

$(VENV)/.installed: $(VENV)/.created $(VENV)/.cute-headers $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation --no-deps .
	touch $@

clean:
	rm -rf build $(VENV) .venv-cuda
