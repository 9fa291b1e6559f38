# One entry point for every task. `make test` is what CI runs (via .ci/run).
PYTHON ?= python3
VENV ?= .venv
# The torch to install into the venv. On a machine whose python already has a CUDA
# torch, use it instead:  make install VENV_FLAGS=--system-site-packages TORCH=none
TORCH ?= torch==2.13.0
VENV_FLAGS ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
STAMP := $(VENV)/.recis-installed
BUILT := build/.recis-built
CSRC := $(shell find csrc -type f) setup.py
TORCHRUN := $(VENV)/bin/torchrun
export MAX_JOBS ?= 2

.PHONY: install build test lint format bench train check-cuda clean

install: $(STAMP) $(BUILT)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(if $(filter-out none,$(TORCH)),$(PIP) install "$(TORCH)")
	$(PIP) install ninja setuptools wheel
	# torchrec's own requirements would pull a CUDA torch: install it alone.
	$(PIP) install --no-deps torchrec==1.8.0
	# The package and its dependencies only: $(BUILT) compiles the extension (once).
	RECIS_NO_EXTENSION=1 $(PIP) install --no-build-isolation -e ".[test,peers]"
	touch $(STAMP)

# Incremental rebuild of the extension whenever a csrc file changes.
$(BUILT): $(STAMP) $(CSRC)
	$(PY) setup.py -q build_ext --inplace
	mkdir -p build && touch $(BUILT)

build: $(BUILT)

# Two pytest workers (pytest-xdist): many tests wait on processes they start, so a
# second worker keeps a 2-core machine busy (docs/DECISIONS.md, "CI on two cores").
# TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The README's main job: DLRM on synthetic Criteo-shaped data, 2 CPU ranks over gloo.
# Running it again resumes from the newest checkpoint in $(TRAIN_DIR).
TRAIN_DIR ?= out/dlrm
TRAIN_ARGS ?=
train: install
	$(TORCHRUN) --standalone --nproc_per_node=2 launch/train.py --output_dir $(TRAIN_DIR) \
		--train_steps 1500 --log_steps 100 --save_steps 500 --batch_size 1024 $(TRAIN_ARGS)

# Every benchmark at a size that fits a small machine; see benchmarks/README.md for the
# full-size commands whose results are in benchmarks/RESULTS.md.
bench: install
	$(PY) benchmarks/kernels.py --small
	OMP_NUM_THREADS=1 $(TORCHRUN) --standalone --nproc_per_node=2 benchmarks/sharded_ebc.py
	$(PY) benchmarks/checkpoint.py --size-gb 0.5
	OMP_NUM_THREADS=1 $(PY) benchmarks/criteo_reader.py --rows 50000
	OMP_NUM_THREADS=1 $(TORCHRUN) --standalone --nproc_per_node=2 benchmarks/e2e.py --small

# Compile-checks the CUDA code on a machine without a GPU or a CUDA torch: nvcc compiles
# every kernel; g++ compiles the ATen bindings against the CPU torch's headers plus the
# CUDA library headers of PyPI's nvidia-* wheels (~0.9 GB downloaded once, only their
# include/ folders kept) and the one generated c10 header the CPU wheel lacks; all are
# linked into a throwaway shared library, which catches a symbol defined twice.
CUDA_HEADERS := build/cuda-headers
CUDA_INCLUDE ?= $(firstword $(wildcard /usr/local/cuda/include /usr/local/cuda-*/include))
$(CUDA_HEADERS)/.fetched: | $(STAMP)
	mkdir -p $(CUDA_HEADERS)/wheels $(CUDA_HEADERS)/stub/c10/cuda/impl
	$(PIP) download --no-deps -d $(CUDA_HEADERS)/wheels \
		nvidia-cublas==13.10.0.20 nvidia-cusparse==12.9.4.2 nvidia-cusolver==12.4.1.2
	$(PY) -c "import glob, zipfile; [z.extractall('$(CUDA_HEADERS)', [n for n in z.namelist() if '/include/' in n]) for z in map(zipfile.ZipFile, glob.glob('$(CUDA_HEADERS)/wheels/*.whl'))]"
	printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > $(CUDA_HEADERS)/stub/c10/cuda/impl/cuda_cmake_macros.h
	rm -rf $(CUDA_HEADERS)/wheels
	touch $@

# One object per source, so that `make -j2 check-cuda` (as CI runs it) compiles two at once.
CHECK_CUDA := build/check-cuda
CHECK_CUDA_OBJECTS := $(patsubst csrc/cuda/%,$(CHECK_CUDA)/%.o,$(wildcard csrc/cuda/*.cu csrc/cuda/*.cpp))

$(CHECK_CUDA)/%.cu.o: csrc/cuda/%.cu $(CSRC) | $(STAMP)
	@mkdir -p $(CHECK_CUDA)
	nvcc -std=c++17 -O3 -arch=sm_90 -Icsrc -Xcompiler -fPIC -c $< -o $@

$(CHECK_CUDA)/%.cpp.o: csrc/cuda/%.cpp $(CSRC) $(CUDA_HEADERS)/.fetched | $(STAMP)
	@mkdir -p $(CHECK_CUDA)
	g++ -std=c++20 -fPIC -c -Icsrc -I$(CUDA_HEADERS)/stub \
		$$($(PY) -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I' + p for p in include_paths()))") \
		-I$(CUDA_INCLUDE) $(patsubst %,-I%,$(wildcard $(CUDA_HEADERS)/nvidia/*/include)) \
		$< -o $@

check-cuda: $(CHECK_CUDA_OBJECTS)
	g++ -shared -o $(CHECK_CUDA)/recis_cuda_check.so $^
	@echo "CUDA sources compile and link"

clean:
	rm -rf build recis/_C*.so *.egg-info $(VENV)
