# The two commands of a fresh machine:  `make demo`  and  `make test`.
# Both create their own virtual environment with pip (uv/poetry would ignore the machine's
# torch cap and download gigabytes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,dask,onnx,tflite,cloudinary,zarr,http,torch,transformers

.PHONY: demo test lint venv clean test-tools

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

venv: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/segflow demo --out demo-out

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy segflow

# Debian's chromium (UI screenshot test) and postgresql (production-database test), installed
# when missing and we may (root with apt-get); without them those tests skip with the reason.
test-tools:
	@for pkg in chromium:chromium postgresql:/usr/lib/postgresql; do \
	  bin=$${pkg#*:}; name=$${pkg%%:*}; \
	  if ! command -v $$bin >/dev/null 2>&1 && [ ! -e $$bin ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      echo "installing $$name (Debian) for the tests"; \
	      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$name) >/dev/null 2>&1 \
	        || echo "could not install $$name: its tests will skip"; \
	    else echo "$$name missing: its tests will skip"; fi; \
	  fi; \
	done

test: lint test-tools
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
