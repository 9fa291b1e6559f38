#!/usr/bin/env bash
# The GPU checks in one run, on a machine with a CUDA torch and nvcc (no registry
# needed): builds recis._C with the CUDA kernels in place against that torch, runs the
# `cuda`-marked tests, then benchmarks/kernels.py on the GPU. Logs go to $OUT when it
# is set (the device tool's result folder), else to build/gpu-check.
#
#   PYTHON=python3 bash benchmarks/gpu_check.sh            # the issue's shapes
#   PYTHON=python3 bash benchmarks/gpu_check.sh --small    # extra arguments go to kernels.py
#   PYTHON=python3 bash benchmarks/gpu_check.sh --no-fbgemm --profile
#   FBGEMM_WHEEL=/tmp/fbgemm_gpu-1.6.0-cp312-cp312-manylinux_2_28_x86_64.whl \
#     PYTHON=python3 bash benchmarks/gpu_check.sh     # installs that fbgemm_gpu first
#
# FBGEMM_WHEEL: an fbgemm_gpu wheel built for this torch and CUDA (1.6.0 for torch
# 2.11 + CUDA 13), installed without a registry into a temporary folder on PYTHONPATH;
# the FBGEMM parity tests and kernels.py's FBGEMM column then run on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
logs=${OUT:-build/gpu-check}
mkdir -p "$logs"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -n "${FBGEMM_WHEEL:-}" ]; then
  site=$(mktemp -d)
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$FBGEMM_WHEEL"
  export PYTHONPATH="$PYTHONPATH:$site"
  "$py" -c "import fbgemm_gpu; print('fbgemm_gpu', fbgemm_gpu.__version__)" 2>&1 | tail -1
fi

"$py" - <<'EOF'
import shutil, torch
assert torch.version.cuda is not None, f"torch {torch.__version__} has no CUDA"
assert torch.cuda.is_available(), "torch sees no GPU"
assert shutil.which("nvcc"), "nvcc is not on PATH: the CUDA kernels would not be built"
print("torch", torch.__version__, "on", torch.cuda.get_device_name(), flush=True)
EOF

echo "== build (CUDA kernels for this GPU)"
start=$(date +%s)
arch=$("$py" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$(nproc) "$py" setup.py -q build_ext --inplace \
  >"$logs/build.log" 2>&1 || { tail -40 "$logs/build.log"; exit 1; }
"$py" -c "import recis, torch; assert hasattr(torch.ops.recis, 'pooled_lookup')"
echo "built in $(( $(date +%s) - start ))s"
ldd recis/_C*.so | grep libstdc++ || echo "libstdc++ is linked statically: see setup.py's LINK_ARGS"

tests=0

echo "== error messages with numbers in them, CPU and CUDA (a static libstdc++ copy segfaulted)"
"$py" -m pytest -q -p no:cacheprovider tests/ops/test_route.py -k names_bad_input || tests=1

echo "== cuda tests"
# Under xdist a test that crashes its process is one failure, not the end of the run.
parallel=$("$py" -c "import xdist" 2>/dev/null && echo "-n 8" || true)
"$py" -m pytest -q -m cuda $parallel -p no:cacheprovider tests 2>&1 | tee "$logs/cuda_tests.log" \
  || tests=$?

echo "== kernels benchmark on the GPU (after the tests, whatever they said)"
"$py" benchmarks/kernels.py --device cuda "$@" 2>&1 | tee "$logs/kernels_cuda.log"
exit "$tests"
