# Two commands are the whole set-up: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
DEVICE ?= cpu
export VAR_DIR ?= $(CURDIR)/var

.PHONY: install run services web worker beat provider-worker flower test browser lint fmt bench clean

# Create .venv and install the pinned requirements (re-runs when they change).
$(VENV)/.installed: requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=python3"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

# Everything: embedded services (where no URL is set), migrate, web, worker, provider worker, beat, Flower, supervised
# (a process that exits is restarted; a crash loop stops all; logs in VAR_DIR/log). Ctrl-C stops all.
run: install
	$(PY) scripts/run.py all --device $(DEVICE)

# The embedded PostgreSQL + Redis under VAR_DIR, in the foreground.
services: install
	$(PY) scripts/run.py services

# The web API (granian), after migrating.
web: install
	$(PY) scripts/run.py web

# One embedding worker; DEVICE=cuda:1 pins it to GPU 1.
worker: install
	$(PY) scripts/run.py worker --device $(DEVICE)

# The BYOK provider worker: queues `providers` and `default` (usage flush, job sweep, webhooks), threads (PROVIDER_CONCURRENCY, 16).
provider-worker: install
	$(PY) scripts/run.py provider-worker

# celery beat: periodic usage flush and job sweep (run one per deployment).
beat: install
	$(PY) scripts/run.py beat

# Flower on FLOWER_HOST:FLOWER_PORT (127.0.0.1:5555); beyond loopback it requires FLOWER_BASIC_AUTH=user:password.
flower: install
	$(PY) scripts/run.py flower

# The test suite (uses DATABASE_URL / REDIS_URL where set, else the embedded pair).
test: install browser
	$(PY) -m pytest

# Headless Chromium + chromedriver (Debian's packages) for the admin's browser tests (tests/browser/):
# installed where /usr/bin/chromedriver is missing and this runs as root with apt-get. Where it cannot
# be installed, those tests fail under CI (CI=true) naming what to install, and are skipped elsewhere.
browser:
	@if [ -x /usr/bin/chromedriver ] && [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver (Debian packages) for the browser tests"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	    || echo "make browser: could not install chromium chromium-driver; the browser tests will say so"; \
	else echo "make browser: no /usr/bin/chromedriver and not root (or no apt-get): install chromium and chromium-driver for the browser tests"; fi

# Ruff, the import contract (pyproject.toml: the apps import one way), then mypy (every function typed).
lint: install
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m mypy

fmt: install
	$(PY) -m ruff check --fix . && $(PY) -m ruff format .

# Benchmarks (they start their own web and worker); see docs/BENCHMARKS.md.
bench: install
	$(PY) bench/e2e.py
	$(PY) bench/jobs.py
