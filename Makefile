# lambdagrad: `make demo` and `make test` bootstrap .venv on their own.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# sam build needs a python3.13 on PATH for the python3.13 runtime (pyenv ships one here).
SAM_PYTHON_DIR ?= $(shell pyenv root 2>/dev/null)/versions/3.13.0/bin
SAM_VENV := .venv-sam
# checkov (template security scan, tests/unit/test_checkov.py) gets its own venv: its many
# dependencies must not move the project's pins. Pinned so a new release's checks land on purpose.
CHECKOV_VENV    := .venv-checkov
CHECKOV_VERSION ?= 3.3.30

.PHONY: demo test lint build validate checkov clean

$(STAMP): pyproject.toml setup.py $(wildcard layers/lambdagrad/lambdagrad/native/kernels*)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python -c "import lambdagrad.native as n; print('gradient kernels:', n.STATUS)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lambdagrad train events/data/houses.csv --label price --model linear \
		--optimizer sgd --lr 0.05 --batch-size 64 --workers 4 --epochs 5 --out runs/demo --overwrite
	$(BIN)/lambdagrad evaluate runs/demo events/data/houses.csv --label price
	$(BIN)/lambdagrad predict runs/demo events/data/houses.csv --out runs/demo/predictions.csv

test: $(STAMP) $(CHECKOV_VENV)/.installed
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/cfn-lint template.yaml

$(CHECKOV_VENV)/.installed:
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/pip install --quiet 'checkov==$(CHECKOV_VERSION)'
	touch $@

checkov: $(CHECKOV_VENV)/.installed
	$(CHECKOV_VENV)/bin/checkov -f template.yaml --framework cloudformation --skip-download --compact

$(SAM_VENV)/.installed:
	$(SAM_PYTHON_DIR)/python3.13 -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/pip install --quiet aws-sam-cli
	touch $@

validate: $(SAM_VENV)/.installed
	PATH="$(SAM_PYTHON_DIR):$$PATH" $(SAM_VENV)/bin/sam validate --lint --region us-east-1

build: $(SAM_VENV)/.installed
	PATH="$(SAM_PYTHON_DIR):$$PATH" $(SAM_VENV)/bin/sam build

clean:
	rm -rf $(VENV) $(SAM_VENV) $(CHECKOV_VENV) .aws-sam runs
