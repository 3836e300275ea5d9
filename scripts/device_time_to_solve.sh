#!/usr/bin/env bash
# Time to solve on the GPU (issue 12's table): T-maze of length L with the preset and 512 envs in minibatches of 8
# envs (ENVS / 8 minibatches: the preset's minibatch and gradient steps per env step; with 8 minibatches at 512 envs
# no seed learnt L = 50 on the H200, with 64 every seed did on the CPU, docs/gpu.md), one run per seed, then the greedy and sampled evaluation; the wall seconds and env steps at which the rollout success
# first reaches 0.95 come from metrics.jsonl. Logs to $OUT.
#
#   L=50 SEEDS="1 2 3" STEPS=6000000 bash scripts/device_time_to_solve.sh
#   CAPTURE="--capture-rollout graph" L=50 bash scripts/device_time_to_solve.sh   # extra train.py options
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_tts}
. scripts/device_env.sh
L=${L:-50}; SEEDS=${SEEDS:-1 2 3}; STEPS=${STEPS:-6000000}; DEVICE=${DEVICE:-cuda}; ENVS=${ENVS:-512}
MB=${MB:-$((ENVS / 8))}; CAPTURE=${CAPTURE:-}
for s in $SEEDS; do
  run="$OUT/tmaze_L${L}_s$s"
  timeout "${T_RUN:-150}" python3 scripts/train.py --env MemoryCores/TMaze-v0 --env-kwargs "{\"length\": $L}" --core lstm \
    --num-envs "$ENVS" --num-minibatches "$MB" --total-steps "$STEPS" --seed "$s" --device "$DEVICE" --run-dir "$run" \
    --no-progress --no-tensorboard --checkpoint-every 1000 $CAPTURE 2>&1 | tail -2
  python3 scripts/evaluate.py "$run" --episodes 500 --device "$DEVICE" --json > "$run.eval.json" 2>&1
  python3 - "$run" <<'PY'
import json, sys
run = sys.argv[1]
rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
hit = next((r for r in rows if r.get("success_rate", 0) >= 0.95), None)
ev = json.loads(open(f"{run}.eval.json").read().strip().splitlines()[-1])
out = {"run": run, "steps": rows[-1]["global_step"], "seconds": rows[-1]["time_elapsed"], "fps": rows[-1]["fps"],
       "solved_at_steps": hit and hit["global_step"], "solved_at_seconds": hit and hit["time_elapsed"],
       "greedy": ev["deterministic"]["success_rate"], "sampled": ev["stochastic"]["success_rate"]}
print(json.dumps(out))
open(f"{run}.summary.json", "w").write(json.dumps(out))
PY
done 2>&1 | tee "$OUT/time_to_solve.log"
rm -rf "$OUT"/tmaze_L*_s*/  # keep the summaries and evaluations only (what comes back is limited)
