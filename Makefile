# ghibli-anim: one-line idea -> Ghibli-style animation.
# `make demo` and `make test` work on a fresh machine: each sets up .venv first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch goes in first and pinned. Which build: ghibli_anim/devtools/torch_choice.py asks nvidia-smi
# and prints pip's arguments: a CUDA build from download.pytorch.org that the driver and GPU run, or
# torch==$(TORCH_VERSION) from the default index (no NVIDIA GPU; on Linux x86_64 PyPI's wheel is itself
# the CUDA 13 build, which needs driver R580+). TORCH_SPEC and/or TORCH_INDEX skip the detection:
#   make setup TORCH_INDEX=https://download.pytorch.org/whl/cu126
TORCH_VERSION := 2.13.0
TORCH_SPEC ?=
TORCH_INDEX ?=
PROFILE ?= sd15-ghibli
IDEA ?= a dragon glides over a medieval town at dusk
FRAMES ?= 8
PYTEST_ARGS ?=
MUTATION_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help setup proto lint format test mutation bench soak demo up down logs up-local clean docs

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@spec='$(TORCH_SPEC)'; index='$(TORCH_INDEX)'; \
	if [ -n "$$spec$$index" ]; then \
	  set -- "$${spec:-torch==$(TORCH_VERSION)}"; \
	  if [ -n "$$index" ]; then set -- "$$@" --index-url "$$index"; fi; \
	else \
	  choice=$$($(PYTHON) ghibli_anim/devtools/torch_choice.py --torch $(TORCH_VERSION)) || exit 1; \
	  set -- $$choice; \
	fi; \
	echo "$(PIP) install -q $$*"; \
	$(PIP) install -q "$$@"
	$(PIP) install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed ## create .venv and install everything (torch pinned first, the build for this machine)

proto: setup ## regenerate ghibli_anim/contracts/pb from proto/
	$(PY) -m ghibli_anim.devtools.protogen

lint: setup ## ruff format check + lint, and the import contracts (layers, independent services, no cycles)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

format: setup ## ruff format + autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: setup ## run the whole test suite (real nats-server and SeaweedFS, tiny models)
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

mutation: setup ## mutation score of the core modules with their unit tests (not in CI; ~5 min)
	$(PY) -m ghibli_anim.devtools.mutation $(MUTATION_ARGS)

docs: setup ## regenerate the tables of README.md and ARCHITECTURE.md from the code
	$(PY) -m ghibli_anim.devtools.docs

bench: setup ## benchmarks: print figures and ratios
	$(PY) bench/chain_host.py
	$(PY) bench/store_put.py
	$(PY) bench/store_stat.py
	$(PY) bench/kv_get.py
	$(PY) bench/overhead.py
	$(PY) bench/load.py
	$(PY) bench/history.py

SOAK_ARGS ?=

soak: setup ## chaos soak: 200 tiny jobs over 10 min while processes are SIGKILLed (not in CI; SOAK_ARGS=--quick)
	$(PY) bench/soak.py $(SOAK_ARGS)

demo: setup ## render an animation in embedded mode (PROFILE=tiny for the offline smoke run)
	$(VENV)/bin/ghibli-anim generate "$(IDEA)" --frames $(FRAMES) --profile $(PROFILE)

COMPOSE ?= docker compose

.env: ## write .env from .env.example with random secrets (never overwrites)
	$(PYTHON) deploy/make_env.py .env.example .env

up: .env ## docker compose: build and start everything, wait until healthy (profiles: .env)
	$(COMPOSE) up --build --detach --wait --wait-timeout 1800

down: ## docker compose: stop and remove the containers (volumes stay; ARGS=-v drops them)
	$(COMPOSE) down $(ARGS)

logs: ## docker compose: follow every service's log (SERVICE=planner for one)
	$(COMPOSE) logs --follow --tail=200 $(SERVICE)

up-local: setup ## the distributed topology as local processes (no Docker)
	$(VENV)/bin/ghibli-anim up-local

clean: ## remove caches and runs (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache mutants
