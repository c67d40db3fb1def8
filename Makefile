VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup cpu-extension test demo compare benchmark-qps benchmark-quality daily-loop gpu-check cluster-up cluster-down clean

# Re-installs only when the package definition changes; redis-server (the Redis history store's tests) from
# Debian's packages when missing and installable.
setup: $(STAMP) cpu-extension
	bash platform/install-redis.sh

$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The CPU kernel backend's C++ time loops (dien/kernels/cpu_recurrence.cpp), compiled with -march=native. A build
# is named by its source, torch and the CPU's instruction set, so a changed source or a venv moved to another CPU
# gets a new build (a second of checking when it exists). Optional: without them the backend runs its PyTorch
# loops, so a failed build only warns (and is retried by the next `make setup`).
cpu-extension: $(STAMP)
	$(PYTHON) -m dien.kernels.cpu --build --if-missing > $(VENV)/dien-cpu-extension.log 2>&1 \
		|| echo "warning: the CPU kernel extension did not build (see $(VENV)/dien-cpu-extension.log); using PyTorch loops"

test: setup
	$(PYTHON) -m pytest -q

# The whole platform on a local cluster: cluster-up, ray job submit (prepare, teacher, student, evaluate),
# serve deploy, scoring requests, a 20-second QPS run, cluster-down (also when a step fails).
demo: setup
	$(PYTHON) jobs/demo.py

# DIEN against the paper's baselines on synthetic data (test AUC table).
compare: setup
	$(PYTHON) jobs/compare_models.py --preset demo --out runs/compare

# Serving throughput on an embedded Ray with HAProxy in front (no-op ceiling, Scorer deployment vs scoring in the
# ingress vs a replica per core, batching on/off, teacher/student, kernels) against plain uvicorn endpoints for our
# student and DeepCTR-Torch's DIEN, with the offline compute limit;
# QPS_ARGS=--quick for a short run, QPS_ARGS="--url http://127.0.0.1:8000" for a running deployment.
benchmark-qps: setup
	$(PYTHON) jobs/benchmark_qps.py $(QPS_ARGS)

# The daily loop on MovieLens (read in place from ../shared): warm start on each new time window against full
# retraining on everything so far, both tested on the next window; DAILY_ARGS="--seeds 0,1,2 --windows 5".
daily-loop: setup
	$(PYTHON) jobs/daily_loop.py --ratings $(ML_DATA)/ratings.csv --movies $(ML_DATA)/movies.csv $(DAILY_ARGS)

# Our DIEN, DIN and BaseModel against DeepCTR-Torch's DIEN and DIN on MovieLens (read in place from ../shared),
# 3 seeds; QUALITY_ARGS="--budget best" trains every model to its best validation epoch.
ML_DATA ?= ../shared/data/ml-latest-small
ML_OUT ?= data/movielens
benchmark-quality: setup
	$(PYTHON) -m pip install --quiet -e '.[peers]'
	test -f $(ML_OUT)/manifest.json || $(PYTHON) jobs/prepare_data.py --source events --input $(ML_DATA)/ratings.csv \
		--columns user=userId,item=movieId,timestamp=timestamp --items $(ML_DATA)/movies.csv \
		--item-columns item=movieId,category=genres --protocol sliding --eval-targets 10 --out $(ML_OUT)
	$(PYTHON) jobs/bench_quality.py --data $(ML_OUT) $(QUALITY_ARGS)

# On a CUDA machine, which needs neither Ray nor the venv: the kernel and DIEN-training benchmarks, then the
# Triton kernels compiled and checked against the reference (fp32 and bf16). GPU_PYTHON is a python with torch,
# triton, pyarrow and pytest; GPU_OUT receives the JSON reports.
GPU_PYTHON ?= python3
GPU_OUT ?= runs/gpu
gpu-check:
	mkdir -p $(GPU_OUT)
	PYTHONPATH=. $(GPU_PYTHON) jobs/bench_kernels.py --out $(GPU_OUT)/bench_kernels.json
	PYTHONPATH=. $(GPU_PYTHON) jobs/bench_kernels.py --no-train --batches 4096 --hiddens 32 108 \
		--out $(GPU_OUT)/bench_kernels_large_batch.json
	PYTHONPATH=. $(GPU_PYTHON) jobs/bench_kernels.py --batches 128 --hiddens 108 --train-batch 1024 \
		--train-hidden 108 --out $(GPU_OUT)/bench_training_teacher.json
	PYTHONPATH=. $(GPU_PYTHON) -m pytest -q --noconftest -p no:cacheprovider tests/test_kernels_triton.py

# A local Ray head from $(VENV) with the dashboard and token authentication (NUM_CPUS=4 by default).
cluster-up: setup
	VENV=$(VENV) bash platform/cluster-up.sh

cluster-down:
	VENV=$(VENV) bash platform/cluster-down.sh

clean:
	rm -rf runs data artifacts
