#!/usr/bin/env bash
# Time to solve on the GPU (issue 12's table): one training run per seed of a task with GPU batch settings, then the
# greedy and sampled evaluation; the wall seconds and env steps at which the rollout success first reaches SOLVED
# (default 0.95) come from metrics.jsonl. One JSON summary per run, and the log, in $OUT.
#
# Default: the T-maze of length L with the preset at 512 envs in minibatches of 8 envs (ENVS / 8 minibatches: the
# preset's minibatch and gradient steps per env step; with 8 minibatches at 512 envs no seed learnt L = 50 on the
# H200, with 64 every seed did on the CPU, docs/gpu.md). ENV / ENV_KWARGS / CORE / ENVS / MB pick another task;
# EXTRA adds train.py options (e.g. "--capture-rollout graph --capture-update graph").
#
#   L=50 SEEDS="1 2 3" STEPS=6000000 bash scripts/device_time_to_solve.sh
#   ENV=MemoryCores/Copy-v0 ENV_KWARGS='{"min_length": 6, "max_length": 6}' CORE=lru ENVS=1024 STEPS=4000000 \
#     bash scripts/device_time_to_solve.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_tts}
. scripts/device_env.sh
L=${L:-50}; SEEDS=${SEEDS:-1 2 3}; STEPS=${STEPS:-6000000}; DEVICE=${DEVICE:-cuda}; ENVS=${ENVS:-512}
MB=${MB:-$((ENVS / 8))}; EXTRA=${EXTRA:-${CAPTURE:-}}; ENV=${ENV:-MemoryCores/TMaze-v0}; CORE=${CORE:-lstm}
ENV_KWARGS=${ENV_KWARGS:-"{\"length\": $L}"}; SOLVED=${SOLVED:-0.95}
name=$(echo "${ENV#*/}_${CORE}" | tr -c 'A-Za-z0-9_\n' '_')
for s in $SEEDS; do
  run="$OUT/${name}_s$s"
  # shellcheck disable=SC2086
  timeout "${T_RUN:-150}" python3 scripts/train.py --env "$ENV" --env-kwargs "$ENV_KWARGS" --core "$CORE" \
    --num-envs "$ENVS" --num-minibatches "$MB" --total-steps "$STEPS" --seed "$s" --device "$DEVICE" --run-dir "$run" \
    --no-progress --no-tensorboard --checkpoint-every 1000 $EXTRA 2>&1 | tail -2
  python3 scripts/evaluate.py "$run" --episodes 500 --device "$DEVICE" --json > "$run.eval.json" 2>&1
  python3 - "$run" "$SOLVED" <<'PY'
import json, sys
run, solved = sys.argv[1], float(sys.argv[2])
rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
hit = next((r for r in rows if r.get("success_rate", 0) >= solved), None)
ev = json.loads(open(f"{run}.eval.json").read().strip().splitlines()[-1])
out = {"run": run, "steps": rows[-1]["global_step"], "seconds": rows[-1]["time_elapsed"], "fps": rows[-1]["fps"],
       "solved_at_steps": hit and hit["global_step"], "solved_at_seconds": hit and hit["time_elapsed"],
       "greedy": ev["deterministic"].get("success_rate"), "sampled": ev["stochastic"].get("success_rate"),
       "greedy_return": ev["deterministic"].get("mean_return"), "sampled_return": ev["stochastic"].get("mean_return")}
print(json.dumps(out))
open(f"{run}.summary.json", "w").write(json.dumps(out))
PY
done 2>&1 | tee "$OUT/time_to_solve_${name}.log"
rm -rf "$OUT"/*_s[0-9]*/  # keep the summaries and evaluations only (what comes back is limited)
(cd "$OUT" && files=$(ls | grep -v '\.tgz$') && tar -czf "time_to_solve_${name}.tgz" $files && rm -f $files)
