#!/usr/bin/env python3
"""Evaluate a trained PPO checkpoint: mean return and success rate, deterministic and stochastic.

    python scripts/evaluate.py runs/MemoryCores_TMaze-v0__lstm__1/checkpoint.pt
    python scripts/evaluate.py RUN_DIR --env MemoryCores/TMaze-v0 --episodes 500 --json

CHECKPOINT is a checkpoint file or a run directory. --env defaults to the env the policy was trained on (with
its env keywords; --env-kwargs overrides them). Deterministic = the mode of the action distribution (and greedy
core choices); stochastic = sampled. Each of the N episodes is the first episode of one of N parallel envs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint file or run directory")
    parser.add_argument("--env", default=None, help="env id (default: the training env)")
    parser.add_argument("--env-kwargs", default=None, help="JSON env keywords (default: the training ones)")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per mode (default 100)")
    parser.add_argument("--seed", type=int, default=12345, help="env seed (default 12345)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from agents.checkpoint import CheckpointError
    from agents.ppo import resolve_device
    from agents.runner import evaluate_policy, load_policy

    try:
        if args.episodes <= 0:
            raise ValueError(f"--episodes {args.episodes} is not valid: expected a positive integer")
        device = resolve_device(args.device)
        policy, cfg, ckpt = load_policy(args.checkpoint, device)
        env = args.env or cfg.env
        if args.env_kwargs is not None:
            env_kwargs = json.loads(args.env_kwargs)
            if not isinstance(env_kwargs, dict):
                raise ValueError(f"--env-kwargs {args.env_kwargs!r} must be a JSON object")
        else:
            env_kwargs = cfg.env_kwargs_dict() if env == cfg.env else {}
        torch.manual_seed(args.seed)
        result = {
            "checkpoint": str(args.checkpoint), "env": env, "env_kwargs": env_kwargs, "core": cfg.core,
            "train_steps": int(ckpt["global_step"]),
        }
        for mode in ("deterministic", "stochastic"):
            result[mode] = evaluate_policy(
                policy, env, args.episodes, deterministic=mode == "deterministic", env_kwargs=env_kwargs,
                seed=args.seed, device=device,
            )
    except json.JSONDecodeError as e:
        print(f"error: --env-kwargs is not valid JSON: {e}", file=sys.stderr)
        return 2
    except (ValueError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['checkpoint']}: core {cfg.core}, {result['train_steps']} training steps, "
              f"env {env} {env_kwargs}")
        for mode in ("deterministic", "stochastic"):
            r = result[mode]
            succ = f", success rate {r['success_rate']:.3f}" if "success_rate" in r else ""
            print(f"  {mode:>13}: mean return {r['mean_return']:.3f}{succ}, mean length {r['mean_length']:.1f} "
                  f"({r['episodes']} episodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
