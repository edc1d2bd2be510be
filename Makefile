# The two commands a new user needs (see README):
#   make serve   run fileproc on its embedded default (no servers to install);
#                make serve CONFIG=my.toml runs it with a config file (./fileproc.toml is read by itself)
#   make test    run the whole test suite
PYTHON ?= python3
# An active virtualenv (as .ci/run sets up) is used as it is; otherwise .venv/.
VENV   ?= $(or $(VIRTUAL_ENV),.venv)
BIN    := $(VENV)/bin

.PHONY: install serve test lint bench clean

$(BIN)/fileproc: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/fileproc

serve: install
	$(BIN)/fileproc $(if $(CONFIG),--config $(CONFIG)) serve

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The architecture's contracts are in pyproject.toml ([tool.importlinter]).
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy fileproc workers
	$(BIN)/lint-imports --no-cache

bench: install
	$(BIN)/python -m bench.thumbnail_bench
	$(BIN)/python -m bench.intake
	$(BIN)/python -m bench.invoke

clean:
	rm -rf $(VENV) fileproc-data .pytest_cache .ruff_cache .mypy_cache
