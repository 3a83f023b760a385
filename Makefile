# Two commands do all the set-up (see README):  make book   |   make test
# The first call creates .venv and installs the package with its book and test extras.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= cpu
# Records are committed for the cpu profile, so `make book` re-executes chapters from them.
# --all: re-render every page (execution stays cached), so launch links follow new .ipynb files.
BUILD   := _build/$(PROFILE)

.PHONY: book test env clean paper-dryrun gpu-dryrun

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[book,test]"
	touch $@

env: $(VENV)/.installed

book: $(VENV)/.installed
	BPLIB_PROFILE=$(PROFILE) $(VENV)/bin/jupyter-book build . -W -n --keep-going --all \
		--path-output $(BUILD)
	@echo "open $(BUILD)/_build/html/index.html"

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

# Every chapter at the paper profile's models, widths and code paths, cut to 2 batches per
# training phase and tiny measurement budgets (bplib.profiles.<chapter>.DRYRUN; CIFAR-100 as its
# 20-image offline stand-in), on the CPU. A path test: its numbers mean nothing and its records
# go to a scratch store. Fails on any crash, shape or dtype error. Every claim of the registry
# (bplib/registry.py) runs, in reverse registry order: the two longest chapters (rank, ntk) are
# the last registered, so with 2 jobs they start first.
DRYRUN := _build/paper-dryrun
paper-dryrun: $(VENV)/.installed
	rm -rf $(DRYRUN)
	BPLIB_RECORDS=$(abspath $(DRYRUN))/records BPLIB_CHECKPOINTS=$(abspath $(DRYRUN))/checkpoints \
		time $(VENV)/bin/bplib-run \
		$$($(PY) -c 'from bplib.registry import CLAIMS; print(*reversed(CLAIMS))') \
		--profile paper --seeds 0 -p dryrun True --jobs 2 --runs-dir $(DRYRUN)/runs --no-progress

# The same for the gpu profile (issue 26): its models, widths, arms and data sets, 2 batches per
# phase. A separate target: 9 min 14 s on 2 idle cores, the paper dry run 13 min 30 s (commit
# 0cd2e1b); together they would pass 15 minutes.
GPU_DRYRUN := _build/gpu-dryrun
gpu-dryrun: $(VENV)/.installed
	rm -rf $(GPU_DRYRUN)
	BPLIB_RECORDS=$(abspath $(GPU_DRYRUN))/records \
		BPLIB_CHECKPOINTS=$(abspath $(GPU_DRYRUN))/checkpoints time $(VENV)/bin/bplib-run \
		$$($(PY) -c 'from bplib.registry import CLAIMS; print(*reversed(CLAIMS))') \
		--profile gpu --seeds 0 -p dryrun True --jobs 2 --runs-dir $(GPU_DRYRUN)/runs --no-progress

clean:
	rm -rf _build
