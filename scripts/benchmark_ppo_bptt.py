#!/usr/bin/env python3
"""Time of one PPO loss + backward with memory-efficient BPTT, with and without the episode-segment layout.

    python3 scripts/benchmark_ppo_bptt.py --threads 1
    python3 scripts/benchmark_ppo_bptt.py --core gru --length 100 --max-steps 120 --num-steps 512 --slots 8 16

One rollout of the T-maze (``--num-envs`` x ``--num-steps``, episodes cut by ``--max-steps`` so that they start
inside the sequences, as in training), then the loss of the whole rollout as one minibatch of ``--num-steps``-step
sequences and its backward pass, timed for each variant, interleaved, median of ``--repeats``:

* ``plain``: plain BPTT over the episode segments (the update's default for lstm/gru: ``segmented_unroll``);
* ``hsm-M-S rows``: memory-efficient BPTT (M stored states, S-step stretches) over the rows as they are: a stretch
  with an episode start inside falls back to the core's step loop (lstm/gru fuse reset-free stretches only);
* ``hsm-M-S segments``: the same over the episode segments (what the update does): every stretch fused.

The loss and the gradients of the three are the same (tests/test_bptt.py); only time differs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from agents.env_adapter import TorchVecEnv  # noqa: E402
from agents.evaluation import build_policy  # noqa: E402
from agents.ppo import PPO, TrainConfig  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--core", default="lstm", choices=["lstm", "gru"], help="core with a fused reset-free unroll")
    p.add_argument("--length", type=int, default=50, help="T-maze corridor length L (default 50)")
    p.add_argument("--max-steps", type=int, default=70, help="T-maze episode step limit (default 70)")
    p.add_argument("--num-envs", type=int, default=32, help="envs of the rollout (default 32, the preset's)")
    p.add_argument("--num-steps", type=int, default=256, help="rollout and sequence length (default 256)")
    p.add_argument("--slots", nargs="+", type=int, default=[8], help="stored states M (default 8)")
    p.add_argument("--segments", type=int, default=32, help="recomputed stretch S (default 32)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per variant, median reported (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, set explicitly (default 1)")
    p.add_argument("--json", default="", help="write the rows here as JSON")
    args = p.parse_args()
    if min(args.slots + [args.segments, args.num_steps, args.repeats, args.length, args.max_steps]) < 1:
        p.error("every count must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = TrainConfig(env="MemoryCores/TMaze-v0", env_kwargs=json.dumps({"length": args.length,
                                                                          "max_steps": args.max_steps}),
                      core=args.core, num_envs=args.num_envs, num_steps=args.num_steps, seq_len=args.num_steps,
                      num_minibatches=1, update_epochs=1, progress=False, tensorboard=False)
    venv = TorchVecEnv(cfg.env, cfg.num_envs, "cpu", cfg.env_kwargs_dict())
    policy = build_policy(cfg, venv.single_observation_space, venv.single_action_space)
    ppo = PPO(policy, venv, cfg, seed=0)
    data = ppo.sequences(ppo.collect())
    venv.close()
    starts = int(data["starts"][1:].sum())
    print(f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, core {args.core}, T-maze L "
          f"{args.length} (max {args.max_steps} steps), {args.num_envs} envs x {args.num_steps} steps, {starts} "
          f"episode starts inside the sequences, median of {args.repeats}")
    idx = torch.arange(data["starts"].shape[1])
    variants = [("plain", 0, True)] + [(f"hsm-{m}-{args.segments} {lay}", m, lay == "segments")
                                       for m in args.slots for lay in ("rows", "segments")]
    times: dict[str, list[float]] = {v[0]: [] for v in variants}
    for r in range(args.repeats + 1):  # the first round is a warm-up
        for name, slots, segmented in variants:
            ppo.cfg = replace(cfg, bptt_memory_slots=slots, bptt_segment_steps=args.segments)
            policy.segment_unroll = segmented
            policy.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            loss, _ = ppo.loss(data, idx)
            loss.backward()
            if r:
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["plain"])
    rows = []
    print(f"{'variant':<24}{'seconds':>9}{'x plain':>9}")
    for name, _, _ in variants:
        t = statistics.median(times[name])
        rows.append({"variant": name, "seconds": t, "time_ratio": t / base, "episode_starts": starts})
        print(f"{name:<24}{t:>9.3f}{t / base:>9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
