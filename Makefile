# The two README commands are `make serve` and `make test`; both set up first (idempotent, quick
# when already done: scripts/setup.sh).
#   make setup                    virtualenv from requirements.lock, tools in .tools/, default model
#   make serve                    tritonserver with the default model; env or make variables HTTP_PORT,
#                                 GRPC_PORT, METRICS_PORT, MODEL_DIR (another model), SERVE_ARGS (e.g. --param k=v)
#   make test [PYTEST_ARGS=...]   the whole test suite; pytest collecting no tests is a failure
#   make bench                    benchmarks (prints tables and the command that reproduces them)
#   make generate PROMPT="..."    one chat completion with the default model (or MODEL_DIR)
#   make clean / make distclean   caches of Python and pytest / also .venv, .tools and .cache
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PYTHON := $(VENV)/bin/python
DEFAULT_MODEL := $(CURDIR)/.cache/models/smollm2-moe
PROMPT ?= What is the capital of France?
PYTEST_ARGS ?=
SERVE_ARGS ?=
export VENV
# Through the environment, unexpanded, so that quotes or `$` in a prompt reach Python unchanged.
export GENERATE_PROMPT := $(value PROMPT)
# HTTP_PORT, GRPC_PORT, METRICS_PORT (read by backend.serve) reach it by themselves when given on the
# command line or in the environment; exporting them here would set them empty when unset.

.PHONY: setup serve test bench generate clean distclean

setup:
	scripts/setup.sh

serve: setup
	$(PYTHON) -m backend.serve --with-gateway $(if $(MODEL_DIR),--model "$(MODEL_DIR)") $(SERVE_ARGS)

test: setup
	@status=0; $(PYTHON) -m pytest -q $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): failing" >&2; fi; \
	exit $$status

bench: setup
	$(PYTHON) -m backend.bench

generate: setup
	$(PYTHON) -m backend.generate --model "$(or $(MODEL_DIR),$(DEFAULT_MODEL))" "$$GENERATE_PROMPT"

clean:
	find . -path ./.venv -prune -o -path ./.tools -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf
	rm -rf .pytest_cache

distclean: clean
	rm -rf .venv .tools .cache
