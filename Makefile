# Two commands do all the set-up (see README):  make book   |   make test
# The first call creates .venv and installs the package with its book and test extras.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PROFILE ?= cpu
# Records are committed for the cpu profile, so `make book` re-executes chapters from them.
# --all: re-render every page (execution stays cached), so launch links follow new .ipynb files.
BUILD   := _build/$(PROFILE)

.PHONY: book test env clean

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

clean:
	rm -rf _build
