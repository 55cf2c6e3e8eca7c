# One command per job, each setting itself up from a fresh clone (see README.md).
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed

# Every tool's cache and config lives inside the project's ignored .cache/, so a run never
# depends on (or pollutes) the user's home directory.
CACHE := $(CURDIR)/.cache
export PATH := $(BIN):$(PATH)
export MPLCONFIGDIR := $(CACHE)/matplotlib
export IPYTHONDIR := $(CACHE)/ipython
export JUPYTER_CONFIG_DIR := $(CACHE)/jupyter/config
export JUPYTER_DATA_DIR := $(CACHE)/jupyter/data
export JUPYTER_RUNTIME_DIR := $(CACHE)/jupyter/runtime
export JUPYTER_PLATFORM_DIRS := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1
# One math thread per process: the tests run two notebooks at once on two cores, and the course's
# small networks lose far more to oversubscribed OpenMP threads than they gain from a second one.
export OMP_NUM_THREADS ?= 1

.PHONY: help venv book test grade bench-grading lab bench exercises clean publish

help:
	@echo "make book   build the course book (executes every chapter)"
	@echo "make test   run the whole test suite (what CI runs)"
	@echo "make grade  instructor: generate exercises, autograde grading/submitted (sandboxed, in parallel), feedback, grades.csv, reports"
	@echo "make bench-grading  grade a synthetic class of 200 with 1 and N workers (bench/results/grading.json)"
	@echo "make lab    JupyterLab on the course (http://localhost:8888; PORT=8899 for another port)"
	@echo "make bench  benchmarks against zuko, nflows and normflows (bench/results/)"
	@echo "make publish  build the book and push _build/html to the gh-pages branch (GitHub Pages by hand)"

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	mkdir -p $(MPLCONFIGDIR) $(IPYTHONDIR) $(JUPYTER_CONFIG_DIR) $(JUPYTER_DATA_DIR) $(JUPYTER_RUNTIME_DIR)
	$(PY) -m ipykernel install --prefix $(CURDIR)/$(VENV) --name python3 --display-name "Python 3 (flows)" >/dev/null
	touch $(STAMP)

book: $(STAMP)
	$(BIN)/jupyter-book build --all -W -n --keep-going .
	@echo "Book: $(CURDIR)/_build/html/index.html"

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile --nbval-lax tests book solutions

grade: $(STAMP)
	$(PY) -m flowgrade all $(ARGS)

bench-grading: $(STAMP)
	$(PY) bench/grading_class.py $(ARGS)

exercises: $(STAMP)
	$(PY) -m flowgrade generate

BENCH_STAMP := bench/.venv/.installed
$(BENCH_STAMP): bench/requirements.txt pyproject.toml
	test -x bench/.venv/bin/python || $(PY_SYS) -m venv bench/.venv
	bench/.venv/bin/python -m pip install -q -r bench/requirements.txt
	bench/.venv/bin/python -m pip install -q --no-deps -e .
	touch $(BENCH_STAMP)

# Peers live in their own environment (bench/requirements.txt), never in the course's.
bench: $(BENCH_STAMP)
	bench/.venv/bin/python bench/run.py $(ARGS)
	@echo "Results: $(CURDIR)/bench/results/"

# JupyterLab on http://localhost:$(PORT)/lab, opening no browser (a container has no display):
# Jupyter prints the link with its login token once it is up. On a busy port it stops rather than
# move to another, so the link and the book's launch buttons stay right: make lab PORT=8899.
# --allow-root only as root (containers, cloud VMs), where JupyterLab refuses to start without it.
# LAB_TOKEN sets the token (through the environment, not the command line that ps shows; empty:
# Jupyter draws one); LAB_ARGS adds options, e.g. LAB_ARGS=--ip=0.0.0.0 inside a container.
PORT ?= 8888
LAB_TOKEN ?=
LAB_ARGS ?=
lab: $(STAMP)
	@echo "JupyterLab on http://localhost:$(PORT)/lab (the link with its token follows when it is up)"
	@$(if $(LAB_TOKEN),JUPYTER_TOKEN='$(LAB_TOKEN)') $(BIN)/jupyter lab --no-browser \
	  --port=$(PORT) --port-retries=0 $(if $(filter 0,$(shell id -u)),--allow-root) \
	  --notebook-dir=$(CURDIR) $(LAB_ARGS)

# Publishing by hand (CI publishes through .github/workflows/book.yml instead): build the book,
# then commit _build/html as the only commit of the gh-pages branch (ghp-import; .nojekyll, so
# that GitHub Pages serves Sphinx's _static/) and force-push it. The local gh-pages branch is
# ghp-import's scratch space: it is recreated each time, so the branch never grows a history of
# old builds. PAGES_REMOTE is a remote name or URL; BUILD=0 publishes the _build/html that is
# there without rebuilding it.
PAGES_REMOTE ?= origin
PAGES_BRANCH ?= gh-pages
BUILD ?= 1
publish: $(STAMP)
	$(if $(filter 0,$(BUILD)),,$(MAKE) book)
	@test -f _build/html/index.html || { echo "no _build/html/index.html: run make book" >&2; exit 1; }
	@test "$$(git symbolic-ref --short -q HEAD)" != '$(PAGES_BRANCH)' \
	  || { echo "$(PAGES_BRANCH) is checked out: publish from another branch" >&2; exit 1; }
	git update-ref -d refs/heads/'$(PAGES_BRANCH)'
	$(BIN)/ghp-import --no-jekyll --force --push --no-history --remote '$(PAGES_REMOTE)' \
	  --branch '$(PAGES_BRANCH)' --message "Publish the book from $$(git rev-parse --short HEAD)" \
	  _build/html
	@echo "Published _build/html to $(PAGES_BRANCH) of $(PAGES_REMOTE)"

clean:
	rm -rf _build .cache grading .pytest_cache
