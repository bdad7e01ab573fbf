# Two commands on a fresh machine: `make demo` (the whole job on a built-in example) and
# `make test` (the suite; .ci/run calls exactly this). Both install what they need.
PY ?= python3
SOAK_SCALE ?= 0.2

.PHONY: install demo test soak soak-corpus bench lint fuzz

install:
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'

demo: install
	$(PY) -m cdc demo --dir cdc-demo --seconds 20

# The same with the core target on PostgreSQL: a private cluster of the installed server
# (Debian: apt install postgresql), started and removed by the demo itself.
.PHONY: demo-postgres
demo-postgres: install
	$(PY) -m cdc demo --postgres --dir cdc-demo --seconds 20

test: install
	CDC_SOAK_SCALE=$(SOAK_SCALE) $(PY) -m pytest -q

soak: install
	CDC_SOAK_SCALE=1 $(PY) -m pytest -q -m slow

# The corpus under bots and SIGKILLs for SOAK_MINUTES (needs ../shared/corpus/jarvis).
SOAK_MINUTES ?= 10
soak-corpus: install
	$(PY) bench/soak.py --minutes $(SOAK_MINUTES)

# The fuzzer (docs/fuzzing.md) for FUZZ_MINUTES with every family (FUZZ_SKIP leaves some
# out), going on after each failure and printing its shrunk SQL reproduction; then
# FUZZ_DAEMON_CASES cases against a real daemon under SIGKILLs.
FUZZ_MINUTES ?= 10
FUZZ_SKIP ?=
FUZZ_DAEMON_CASES ?= 3
fuzz: install
	CDC_FUZZ_MINUTES=$(FUZZ_MINUTES) CDC_FUZZ_FEATURES=all CDC_FUZZ_SKIP=$(FUZZ_SKIP) \
	CDC_FUZZ_DAEMON_CASES=$(FUZZ_DAEMON_CASES) $(PY) -m pytest -q -s -p no:cacheprovider tests/test_fuzz.py

bench: install
	$(PY) -m pytest bench --benchmark-only -q --benchmark-json=bench-results.json

lint: install
	$(PY) -m ruff check . && $(PY) -m ruff format --check .
