# segcls: two commands on a fresh machine.
#   make demo   trains + evaluates a small model on the embedded synthetic benchmark (CPU, <= 10 min)
#   make test   runs the test suite
# Both first run `make setup`: a virtual environment in $(VENV) with torch/torchvision (pinned in
# $(CONSTRAINTS)), detectron2 (tools/install_detectron2.py) and segcls in editable mode. Setup is
# idempotent: once done it is skipped until setup.py, the constraints or the installer change.

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
VENV_PY := $(VENV)/bin/python
STAMP := $(VENV)/.segcls-setup-done
# The demo trains on the fast path (bf16 autocast + channels-last; same accuracy or better over 3
# seeds, 1.7x less time: BENCHMARKS.md). On a CPU without native bf16 (no AMX / AVX-512 BF16, see
# `python -m segcls.collect_env`) use the float32 demo: make demo DEMO_CONFIG=configs/synthetic_context/fcn_r18_demo.yaml
DEMO_CONFIG ?= configs/synthetic_context/fcn_r18_demo_fast.yaml
DEMO_OUTPUT ?= output/demo
# `make benchmark` runs tools/benchmark.py $(BENCHMARK) $(BENCHMARK_ARGS), e.g. BENCHMARK=cac BENCHMARK_ARGS=--quick
BENCHMARK ?= fcn
BENCHMARK_ARGS ?=
export PIP_CONSTRAINT := $(abspath $(CONSTRAINTS))
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test benchmark clean-venv

setup: $(STAMP)

$(STAMP): setup.py $(CONSTRAINTS) tools/install_detectron2.py tools/patches/pb1-detectron2-0.6.patch
	@echo "[setup] virtual environment: $(VENV)"
	@test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing torch/torchvision (constraints: $(CONSTRAINTS))"
	@$(VENV_PY) -m pip install -q torch torchvision setuptools
	@echo "[setup] detectron2"
	@$(VENV_PY) tools/install_detectron2.py
	@echo "[setup] segcls (editable) and its dependencies"
	@$(VENV_PY) -m pip install -q -e '.[dev]'
	@$(VENV_PY) -m segcls.collect_env --short
	@touch $(STAMP)
	@echo "[setup] done"

demo: setup
	$(VENV_PY) datasets/prepare_synthetic_context.py
	$(VENV_PY) tools/train_net.py --config-file $(DEMO_CONFIG) OUTPUT_DIR $(DEMO_OUTPUT)
	@echo "[demo] metrics: $(DEMO_OUTPUT)/eval/results.json  overlays: $(DEMO_OUTPUT)/eval/*/overlays/"

test: setup
	$(VENV_PY) -m pytest

benchmark: setup
	$(VENV_PY) tools/benchmark.py $(BENCHMARK) $(BENCHMARK_ARGS)

clean-venv:
	rm -rf $(VENV)
