# Everything runs in .venv, created and filled on first use; needs only python3, pip and make.
#   make test [PYTEST_ARGS="-k decoder"]   the test suite
#   make lint                              ruff check and format check
#   make demo                              masks and pictures for a few sample photos
#   make mutants                           break the code on purpose, see which test catches it

PYTHON ?= python3
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
# torch first and pinned, so pip does not pick another build for the package's ranges.
TORCH_PACKAGES := torch==2.14.1 torchvision==0.29.1
INSTALLED := $(VENV)/.installed
PYTEST_ARGS ?=
DEMO_IMAGES ?= 4

.PHONY: install test lint demo mutants

install: $(INSTALLED)

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

# The stamp follows pyproject.toml, so a changed dependency list reinstalls.
$(INSTALLED): pyproject.toml | $(VENV_PYTHON)
	$(VENV_PYTHON) -m pip install $(TORCH_PACKAGES)
	$(VENV_PYTHON) -m pip install -e ".[dev,demo]"
	# SAM 2 (the parity tests' reference): built against the torch above, without CUDA kernels.
	SAM2_BUILD_CUDA=0 $(VENV_PYTHON) -m pip install --no-build-isolation -e ".[sam2]"
	touch $@

test: $(INSTALLED)
	$(VENV_PYTHON) -m pytest -q $(PYTEST_ARGS)

# Slow (minutes per breakage), so not part of CI; docs/testing.md has the last table.
mutants: $(INSTALLED)
	$(VENV_PYTHON) scripts/mutants.py

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: $(INSTALLED)
	$(VENV)/bin/amg-demo-data demo/data --count $(DEMO_IMAGES)
	$(VENV_PYTHON) predict.py model=vit_t data.urls=demo/data output_dir=demo/out points_per_side=16
	$(VENV)/bin/amg-visualize demo/out --out demo/pictures
	@echo "masks (COCO RLE shards): $(CURDIR)/demo/out"
	@echo "pictures:                $(CURDIR)/demo/pictures"
