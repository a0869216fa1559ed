# quaywatch: every target installs what it needs into .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_PACKAGES := tshark chromium

.PHONY: demo test bench lint fuzz eval system-packages clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests and benchmarks compare against (tshark is the oracle).
system-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do command -v $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

demo: $(STAMP)
	$(BIN)/python -m quaywatch.demo

test: $(STAMP) system-packages
	$(BIN)/python -m pytest -n 2 --dist loadfile -q

bench: $(STAMP) system-packages
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

# Detection catalogue against the simulator's ground truth, on seeds the tests never use (src/quaywatch/detect/evaluation.py).
eval: $(STAMP)
	$(BIN)/python -m quaywatch.detect.evaluation

fuzz: $(STAMP)
	QUAYWATCH_FUZZ_EXAMPLES=20000 $(BIN)/python -m pytest -q -m fuzz -p no:randomly tests

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-output bench/data
