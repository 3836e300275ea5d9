#!/usr/bin/env bash
# Time to solve on the GPU (issue 12's table) in one device call: scripts/time_to_solve.py on cuda with --preset gpu
# (each task trains until its target, then is evaluated), under a time limit; the per-task results (JSON) and
# report.md come back in one archive (stage runs are left out: what comes back is limited). A task cut off by the
# limit has no result; its stage checkpoints are lost with the device, so give the next call fewer tasks.
#
#   TASKS="tmaze-L50 copy-L6 memorymaze" SEEDS="1 2 3" T_ALL=540 bash scripts/device_time_to_solve.sh
#   TASKS="minigrid-S13" SEEDS="1" MAX_STEPS=4000000 bash scripts/device_time_to_solve.sh
#
# TASKS: names of `python3 scripts/time_to_solve.py --list` (default: tmaze-L50 copy-L6 memorymaze tmaze-L200, the
# tasks with the shortest known times first); SEEDS; MAX_STEPS caps every stage's budget (0: the tasks' own);
# DEVICE (cuda); PRESET (gpu); T_ALL: seconds for all of it (the device tool's limit is 600 per call).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_tts}
. scripts/device_env.sh
TASKS=${TASKS:-tmaze-L50 copy-L6 memorymaze tmaze-L200}; SEEDS=${SEEDS:-1 2 3}; MAX_STEPS=${MAX_STEPS:-0}
DEVICE=${DEVICE:-cuda}; PRESET=${PRESET:-gpu}; T_ALL=${T_ALL:-540}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
# shellcheck disable=SC2086
timeout "$T_ALL" python3 scripts/time_to_solve.py --device "$DEVICE" --preset "$PRESET" --tasks $TASKS \
  --seeds $SEEDS --max-steps "$MAX_STEPS" --out "$OUT/tts" 2>&1 | tee "$OUT/time_to_solve.log"
python3 scripts/time_to_solve.py --report-only --out "$OUT/tts" > /dev/null 2>&1  # the table of what finished
rm -rf "$OUT/tts/runs"
(cd "$OUT" && tar -czf time_to_solve.tgz gpu.txt time_to_solve.log tts && rm -rf gpu.txt time_to_solve.log tts)
echo "device_time_to_solve done"
