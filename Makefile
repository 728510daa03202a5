# exaslide: two commands do all set-up. `make demo` and `make test` create .venv if needed,
# install the project with its dependencies, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/exaslide demo --out demo_out

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/masks.py
	$(BIN)/python bench/synth_memory.py
	$(BIN)/python bench/extract.py
	$(BIN)/python bench/index_scale.py
	$(BIN)/python bench/loader.py

clean:
	rm -rf $(VENV) demo-out demo_out build dist src/*.egg-info .pytest_cache .ruff_cache
