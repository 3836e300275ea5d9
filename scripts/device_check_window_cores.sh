#!/usr/bin/env bash
# GPU checks of the memnet and perceiver_ar cores, as one prepared script for a device session: their CUDA tests
# (everything on the device, no host sync in the step and the fused unroll, fused == step loop), then act and
# fwd+bwd time per step against the window length. Logs go to $OUT.
#
#   bash scripts/device_check_window_cores.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_check}
. scripts/device_env.sh
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } 2>&1 | tee "$OUT/gpu.txt"
timeout "${T_TESTS:-120}" python3 -m pytest -m cuda -q -p no:cacheprovider -rs -k "memnet or perceiver" \
  tests/test_core_contract.py tests/test_memnet.py tests/test_perceiver_ar.py 2>&1 | tee "$OUT/pytest_cuda.log"
timeout "${T_BENCH:-150}" python3 scripts/benchmark_window_cores.py --device cuda --batch 256 \
  --sizes 16 64 256 1024 4096 --repeats 5 --json "$OUT/timing_h200.json" 2>&1 | tee "$OUT/timing_h200.txt"
echo "device_check_window_cores done"
