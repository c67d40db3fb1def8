VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo clean

# Re-installs only when the package definition changes.
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: setup
	$(PYTHON) -m pytest -q

demo: setup
	$(PYTHON) jobs/compare_models.py --preset demo --out runs/demo

clean:
	rm -rf runs data artifacts
