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
# pip installs without compiling (17,860 files, about a quarter of which the jobs ever import):
# each module is compiled once, when a process first imports it, so that writing .pyc files is
# switched on for the project's own commands, whatever PYTHONDONTWRITEBYTECODE the shell sets.
RUN    := PYTHONDONTWRITEBYTECODE=

.PHONY: setup system-deps demo test bench images lock clean help

help:
	@echo "make demo   set up, then ingest, build, serve, add a class, forget, run every experiment; report/index.html"
	@echo "make test   set up, then run the test suite"
	@echo "make bench  run the benchmarks in bench/ (JSON on stdout)"
	@echo "make images build the container images without Docker or a registry (buildah), smoke-test each"
	@echo "make lock   re-resolve the images' dependency locks (infra/docker/requirements*.lock)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

setup: $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

demo: setup system-deps
	$(RUN) $(BIN)/vmem demo --work $(DEMO) --report report --train-per-class $(DEMO_TRAIN_PER_CLASS) --test-per-class $(DEMO_TEST_PER_CLASS) $(DEMO_ARGS)

test: setup system-deps
	$(RUN) $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup system-deps
	$(RUN) $(BIN)/python bench/ingest.py
	$(RUN) $(BIN)/python bench/index.py
	$(RUN) $(BIN)/python bench/serve.py

# Not part of `make test`: needs root for buildah/mmdebstrap and ~25 GB of disk (infra/README.md).
images: setup
	bash infra/docker/build.sh

lock: setup
	bash infra/docker/lock.sh

clean:
	rm -rf $(DEMO) report .pytest_cache
