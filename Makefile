# Everything installs into .venv from the package registries; a fresh clone needs only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: run test check bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

run: $(STAMP)  ## Envoy + Rungway on the demo policy with mock providers; shows a fallback
	$(BIN)/rungway demo

# The end-to-end tests mostly wait on real timers. The slowest of them (the health board's
# timelines, the demo's brownout: about 4 minutes of waiting) run in a second pytest process
# beside the rest, which keeps the whole suite well under 15 minutes on 2 cores.
E2E_BESIDE := tests/e2e/test_health.py tests/e2e/test_tools_and_cli.py

test: $(STAMP)  ## the whole suite: unit, property and end-to-end through real Envoy
	$(BIN)/python -m pytest tests --ignore=tests/e2e
	@beside_log=$$(mktemp); \
	$(BIN)/python -m pytest -p no:cacheprovider $(E2E_BESIDE) >"$$beside_log" 2>&1 & beside=$$!; \
	rest=0; $(BIN)/python -m pytest tests/e2e $(addprefix --ignore=,$(E2E_BESIDE)) || rest=$$?; \
	other=0; wait $$beside || other=$$?; \
	echo "---- $(E2E_BESIDE) (ran beside the rest) ----"; cat "$$beside_log"; rm -f "$$beside_log"; \
	test $$rest -eq 0 && test $$other -eq 0

check: $(STAMP)  ## lint and types
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

soak: $(STAMP)  ## 3,000 fault-mixed streams (+1,000 with rescue on) through real Envoy: no crash, no truncated success
	$(BIN)/python -m tests.soak --streams 3000 --concurrency 8
	$(BIN)/python -m tests.soak --streams 1000 --concurrency 8 --rescue

bench: $(STAMP)  ## plain Envoy vs the full Rungway path, as ratios
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
