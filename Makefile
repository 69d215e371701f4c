# `make demo`: set up .venv (and Debian's Fashion-MNIST package when root), then run the main job.
# `make test`: set up the same, then run the test suite and timm's own model tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch and torchvision are pinned as a pair that installs together here (the pair this platform's pip offers).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= test,faiss,export,augment
# The ffcv extra builds from source against these Debian packages (installed when root); a failed build
# leaves the rest installed and the FFCV test skips with its reason.
OPTIONAL_EXTRAS ?= ffcv
FFCV_DEBS ?= pkg-config libopencv-dev libturbojpeg0-dev
# The demo's run folder (train.py --output output/train --experiment demo) and the evaluation at its end.
DEMO_RUN ?= output/train/demo
DEMO_CKPT ?= $(DEMO_RUN)/model_best.safetensors
DEMO_EVAL_SAMPLES ?= 2000

# `make reproduce`: the paper's vision claims at small scale (reproduce.py; results.json, REPRODUCTION.md and PNGs
# in $(REPRO_RUN)); run it again to continue an interrupted run. `make reproduce QUICK=1`: the 4-token model, one
# seed, for a look (its own folder). REPRO_ARGS adds flags, e.g. REPRO_ARGS="--variants none".
QUICK ?=
REPRO_RUN ?= $(if $(QUICK),output/reproduce-quick,output/reproduce)
REPRO_ARGS ?=
REPRO_QUICK_ARGS := --config configs/reproduce_fmnist_quick.yaml --seeds 0

.PHONY: demo demo-eval reproduce test gpu-test gpu-fig4 gpu-check setup clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && { [ ! -d /usr/share/datasets/fashion-mnist ] || \
		! pkg-config --exists opencv4 libturbojpeg 2>/dev/null; }; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist $(FFCV_DEBS); fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	-$(PY) -m pip install -q -e ".[$(OPTIONAL_EXTRAS)]"
	@touch $(STAMP)

# train.py's embedded default (tiny model, Fashion-MNIST, CPU), then the evaluation of its best checkpoint.
demo: $(STAMP)
	rm -rf $(DEMO_RUN)  # each demo is a new run (train.py refuses to start one in a folder holding another)
	$(PY) train.py --output $(dir $(DEMO_RUN)) --experiment $(notdir $(DEMO_RUN))
	$(MAKE) --no-print-directory demo-eval

# validate.py (trained levels + the official mix'n'match sweep) and retrieval.py on the demo checkpoint;
# CSV/JSON/PNG land in $(DEMO_RUN). Each uses $(DEMO_EVAL_SAMPLES) images of each split, spread evenly over it.
demo-eval: $(STAMP)
	$(PY) validate.py --checkpoint $(DEMO_CKPT) --mixnmatch official --max-samples $(DEMO_EVAL_SAMPLES) --output $(DEMO_RUN)
	$(PY) retrieval.py --checkpoint $(DEMO_CKPT) --max-samples $(DEMO_EVAL_SAMPLES) --output $(DEMO_RUN) \
		--cache-dir $(DEMO_RUN)/embedding_cache

reproduce: $(STAMP)
	$(PY) reproduce.py --output $(REPRO_RUN) $(if $(QUICK),$(REPRO_QUICK_ARGS)) $(REPRO_ARGS)

# timm's own tests/test_models.py (from the installed timm's sdist, fetched with pip once into $(TIMM_TESTS))
# over every registered matmamba* model; tests/timm_suite/run.py lists what it leaves out, and why.
TIMM_TESTS ?= $(VENV)/timm-tests

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -n 2 tests
	$(PY) tests/timm_suite/run.py --cache $(TIMM_TESTS) -n 2

# On a machine with a GPU, with any Python that has torch, triton, timm and pytest (no .venv, no network):
# gpu-test runs the CUDA-only tests, gpu-fig4 the paper's Fig. 4 and issue 14's targets (JSON + PNG in
# $(GPU_OUT), about 8 min); gpu-check both (two calls where one command may run at most 10 minutes).
GPU_PY ?= python
GPU_OUT ?= output/gpu
gpu-test:
	@$(GPU_PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu-test: no CUDA device here')"
	PYTHONPATH=. $(GPU_PY) -m pytest -q -p no:cacheprovider -k cuda tests/test_triton_cuda.py tests/test_triton_kernels.py
gpu-fig4:
	mkdir -p $(GPU_OUT)
	PYTHONPATH=. $(GPU_PY) benchmarks/gpu_fig4.py --json $(GPU_OUT)/fig4.json --png $(GPU_OUT)/fig4.png
gpu-check:
	-$(MAKE) --no-print-directory gpu-test
	$(MAKE) --no-print-directory gpu-fig4

clean:
	rm -rf $(VENV) output
