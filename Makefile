# Two commands: `make demo` and `make test`. Each sets up what it needs first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DEMO   ?= .demo
# Demo size: images per class from Fashion-MNIST (train / test); the full set is 6000 / 1000.
DEMO_TRAIN_PER_CLASS ?= 200
DEMO_TEST_PER_CLASS  ?= 50
PYTEST_ARGS ?=

.PHONY: setup system-deps demo test bench clean help

help:
	@echo "make demo   set up, then ingest Fashion-MNIST, build the memory, classify the test images ($(DEMO)/)"
	@echo "make test   set up, then run the test suite"
	@echo "make bench  run the benchmarks in bench/ (JSON on stdout)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

demo: setup system-deps
	$(BIN)/vmem data fashion-mnist --out $(DEMO)/data --split train --per-class $(DEMO_TRAIN_PER_CLASS) --shard-size 1000
	$(BIN)/vmem data fashion-mnist --out $(DEMO)/data --split test --per-class $(DEMO_TEST_PER_CLASS) --shard-size 1000
	$(BIN)/vmem ingest --input '$(DEMO)/data/fashion-mnist-train-*.tar' --memory $(DEMO)/memory --batch fashion-mnist-train
	$(BIN)/vmem ingest --input '$(DEMO)/data/fashion-mnist-test-*.tar' --memory $(DEMO)/queries --batch fashion-mnist-test
	$(BIN)/vmem index build --memory $(DEMO)/memory --shards 2 --log-level WARNING
	$(BIN)/vmem index log --memory $(DEMO)/memory
	$(BIN)/vmem classify --memory $(DEMO)/memory --queries $(DEMO)/queries --out $(DEMO)/predictions
	$(BIN)/vmem eval --predictions $(DEMO)/predictions --json $(DEMO)/eval.json

test: setup system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup system-deps
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/index.py
	$(BIN)/python bench/serve.py

clean:
	rm -rf $(DEMO) .pytest_cache
