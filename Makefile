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

.PHONY: demo test venv install install-test system-deps lint clean

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

lint: $(PY)
	$(VENV)/bin/ruff check atlasva tests benchmarks

clean:
	rm -rf $(VENV) runs build *.egg-info
