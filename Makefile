# `make demo`: set up .venv (and Debian's Fashion-MNIST package when root), then run the main job.
# `make test`: set up the same, then run the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch and torchvision are pinned as a pair that installs together here (see ENVIRONMENT notes in README).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= test

.PHONY: demo test setup clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/api_tour.py

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV) output
