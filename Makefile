# Two entry points (see README): `make run` and `make test`. Both create the virtualenv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= out

.PHONY: setup run test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# The main job: extract the bundled camera-trap clips, train a head on their labels, write the ethogram.
run: setup
	$(BIN)/ethoprism demo --out $(OUT)

# Lint and format are part of the tests: both run, clean, before pytest.
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

bench: setup
	$(BIN)/ethoprism bench encoder --model videoprism-b

clean:
	rm -rf $(VENV) $(OUT)
