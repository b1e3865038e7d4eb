# The two commands a new user runs: `make book` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
JB     := $(BIN)/jupyter-book build . -W -n --keep-going
CHROMIUM := /usr/bin/chromium
NOTEBOOKS := $(sort $(wildcard book/*.ipynb))

.PHONY: install book test unit nbval book-strict browser execute timings bench clean lab lab-student student grade

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

book: $(STAMP)
	$(JB)
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

test: unit nbval book-strict browser

unit: $(STAMP)
	$(BIN)/python -m pytest tests --ignore=tests/browser -ra

nbval: $(STAMP)
	$(BIN)/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with book/nbval_sanitize.cfg -p no:cacheprovider book/ -ra --durations=0

book-strict: $(STAMP)
	rm -rf _build/html
	$(JB)

# Without Chromium a new user's `make test` still passes, saying loudly what did not run; CI
# (CI=true, .ci/run installs Chromium) fails instead, so the browser tests cannot vanish there.
browser: $(STAMP)
	@if [ -x $(CHROMIUM) ]; then $(BIN)/python -m pytest tests/browser -ra; \
	elif [ -n "$$CI" ]; then echo "CI: $(CHROMIUM) is missing, the browser tests must run here" >&2; exit 1; \
	else printf '\n%s\n%s\n%s\n\n' \
	  "*** THE BROWSER TESTS DID NOT RUN: $(CHROMIUM) is missing." \
	  "*** Install Debian's Chromium and a CJK font (apt-get install chromium fonts-noto-cjk)," \
	  "*** then run: make browser"; fi

execute: $(STAMP)
	for nb in $(NOTEBOOKS); do $(BIN)/jupyter execute --inplace --timeout=1200 $$nb || exit 1; done

timings: $(STAMP)
	$(BIN)/python tools/timings.py
	$(BIN)/python tools/coursework.py page

bench: $(STAMP)
	$(BIN)/python bench/bench.py --json bench/results/bench_cpu.json
	$(BIN)/python bench/compile_cpu.py
	$(BIN)/python bench/fast_sampling.py --json bench/results/fast_sampling_cpu.json
	$(BIN)/python bench/grading.py --json bench/results/grading_cpu.json
	$(BIN)/python tools/timings.py --page-only
	$(BIN)/python tools/coursework.py page

# The notebooks in JupyterLab, from the project's venv: the book (answers in place), or the
# student release (`make student` first; `make lab-student` does both). LAB_ARGS: e.g. --port=8899
# (as root, e.g. in a container, Jupyter refuses to start without --allow-root)
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=book $(LAB_ROOT) $(LAB_ARGS)

lab-student: student
	$(BIN)/jupyter lab --notebook-dir=_build/student/book $(LAB_ROOT) $(LAB_ARGS)

# Coursework (book/teachers.md): the student release, and grading a folder of submissions
# SUBMISSIONS/<student>/<chapter>.ipynb into one CSV table (GRADES, default grades.csv).
GRADES ?= grades.csv
student: $(STAMP)
	$(BIN)/python tools/coursework.py student --out _build/student

grade: $(STAMP)
	@test -n "$(SUBMISSIONS)" || { echo "usage: make grade SUBMISSIONS=DIR [GRADES=grades.csv]" >&2; exit 2; }
	$(BIN)/python tools/coursework.py grade "$(SUBMISSIONS)" --out "$(GRADES)"

clean:
	rm -rf _build
