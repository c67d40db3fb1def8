VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CPU_EXTENSION := $(VENV)/.dien-cpu-extension

.PHONY: setup test demo clean

# Re-installs only when the package definition changes.
setup: $(STAMP) $(CPU_EXTENSION)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The CPU kernel backend's C++ time loops (dien/kernels/cpu_recurrence.cpp). Optional: without them the backend
# runs its PyTorch loops, so a failed build only warns (and is retried by the next `make setup`).
$(CPU_EXTENSION): $(STAMP) dien/kernels/cpu_recurrence.cpp
	$(PYTHON) -m dien.kernels.cpu --build > $(VENV)/dien-cpu-extension.log 2>&1 \
		&& touch $(CPU_EXTENSION) \
		|| echo "warning: the CPU kernel extension did not build (see $(VENV)/dien-cpu-extension.log); using PyTorch loops"

test: setup
	$(PYTHON) -m pytest -q

demo: setup
	$(PYTHON) jobs/compare_models.py --preset demo --out runs/demo

clean:
	rm -rf runs data artifacts
