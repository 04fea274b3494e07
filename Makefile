# Two entry points for a fresh machine with only Python 3.11:
#   make demo   set up .venv and run the demo (train + metrics on the embedded benchmark)
#   make test   set up .venv and run the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned only when the environment has none: a range in pyproject.toml could pull a
# multi-GB CUDA wheel, while 2.13.0 is a CPU wheel. Users with their own torch keep it
# (make VENV_FLAGS=--system-site-packages).
TORCH_PIN ?= torch==2.13.0
VENV_FLAGS ?=

.PHONY: demo test venv lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH_PIN)"
	$(PY) -m pip install -e ".[all,test]"
	touch $@

demo: venv
	$(PY) -m coupled_mamba demo

# pytest's own exit code is kept: 5 (no tests collected) fails the target like any other error.
test: venv
	$(PY) -m pytest -q

lint: venv
	$(PY) -m pip install -q ruff && $(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
