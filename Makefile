# The two commands of a fresh machine:  `make demo`  and  `make test`.
# Both create their own virtual environment with pip (uv/poetry would ignore the machine's
# torch cap and download gigabytes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,dask,onnx,tflite,cloudinary,zarr,torch,transformers

.PHONY: demo test lint venv clean

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

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
