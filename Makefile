# Two commands on a fresh machine: `make demo` (the whole job on a built-in example) and
# `make test` (the suite; .ci/run calls exactly this). Both install what they need.
PY ?= python3
SOAK_SCALE ?= 0.2

.PHONY: install demo test soak soak-corpus bench lint

install:
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'

demo: install
	$(PY) -m cdc demo --dir cdc-demo --seconds 20

test: install
	CDC_SOAK_SCALE=$(SOAK_SCALE) $(PY) -m pytest -q

soak: install
	CDC_SOAK_SCALE=1 $(PY) -m pytest -q -m slow

# The corpus under bots and SIGKILLs for SOAK_MINUTES (needs ../shared/corpus/jarvis).
SOAK_MINUTES ?= 10
soak-corpus: install
	$(PY) bench/soak.py --minutes $(SOAK_MINUTES)

bench: install
	$(PY) -m pytest bench --benchmark-only -q --benchmark-json=bench-results.json

lint: install
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
