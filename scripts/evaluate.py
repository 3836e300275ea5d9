#!/usr/bin/env python3
"""Evaluate a trained PPO checkpoint: mean return and success rate, deterministic and stochastic.

    python scripts/evaluate.py runs/MemoryCores_TMaze-v0__lstm__1/checkpoint.pt
    python scripts/evaluate.py RUN_DIR --env MemoryCores/TMaze-v0 --episodes 500 --json
    python scripts/evaluate.py RUN_DIR --sweep                      # + length generalisation: table and PNG
    python scripts/evaluate.py RUN_DIR --sweep-values 50,100,200,400 --plot tmaze_sweep.png

CHECKPOINT is a checkpoint file or a run directory. The env defaults to the one the policy was trained on (its
--env id, `module:EnvId` included, or its --env-factory, with its env keywords; --env-kwargs overrides them).
--env ID or --env-factory module:function evaluates on another (same observation and action spaces). A policy
trained through the Python API on an env instance with wrappers: pass a factory that builds that env.

Both modes are always reported: deterministic = the mode of the action distribution (and greedy core choices);
stochastic = sampled, as in training. Each of the N episodes is the first episode of one of N parallel envs.

--sweep (tasks with a length knob: T-maze length, Copy/RepeatCopy length, AssociativeRecall items, MiniGridMemory
size) evaluates the same policy at the training value and at 2x, 4x and 8x it (or at --sweep-values), every other
env keyword as in training (Copy: min_length = max_length = the swept length; T-maze: the env's own step limit
4 (L + 1)), prints a table and writes a PNG of success rate (or return) against the knob.
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
    parser.add_argument("--env", default=None,
                        help="env id, or module:EnvId to import a module that registers it (default: the training env)")
    parser.add_argument("--env-factory", default=None,
                        help="module:function returning one gymnasium.Env (wrappers included), called with the env "
                             "keywords; instead of --env (default: the training run's factory, if it had one)")
    parser.add_argument("--env-kwargs", default=None, help="JSON env keywords (default: the training ones)")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per mode (default 100)")
    parser.add_argument("--seed", type=int, default=12345, help="env seed (default 12345)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--sweep", action="store_true",
                        help="also evaluate at longer lengths (training value, 2x, 4x, 8x): a table and a PNG")
    parser.add_argument("--sweep-values", default=None,
                        help="comma-separated knob values for the sweep, e.g. 50,100,200 (implies --sweep)")
    parser.add_argument("--plot", default=None,
                        help="PNG path of the sweep plot (default: generalisation.png beside the checkpoint)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from agents.checkpoint import CheckpointError
    from agents.ppo import resolve_device
    from agents.presets import LENGTH_KNOBS
    from agents.env_adapter import load_env_factory
    from agents.evaluation import env_for_checkpoint, evaluate_policy, load_policy

    try:
        if args.episodes <= 0:
            raise ValueError(f"--episodes {args.episodes} is not valid: expected a positive integer")
        device = resolve_device(args.device)
        if args.env and args.env_factory:
            raise ValueError("give --env or --env-factory, not both")
        policy, cfg, ckpt = load_policy(args.checkpoint, device)
        same_env = not args.env and not args.env_factory or (args.env or args.env_factory) in (cfg.env, cfg.env_factory)
        if args.env_factory:
            env_source, env = load_env_factory(args.env_factory), args.env_factory
        elif args.env:
            env_source = env = args.env
        else:
            env_source, env = env_for_checkpoint(cfg), cfg.env_factory or cfg.env
        if args.env_kwargs is not None:
            env_kwargs = json.loads(args.env_kwargs)
            if not isinstance(env_kwargs, dict):
                raise ValueError(f"--env-kwargs {args.env_kwargs!r} must be a JSON object")
        else:
            env_kwargs = cfg.env_kwargs_dict() if same_env else {}
        torch.manual_seed(args.seed)
        result = {
            "checkpoint": str(args.checkpoint), "env": env, "env_kwargs": env_kwargs, "core": cfg.core,
            "train_steps": int(ckpt["global_step"]),
        }
        sweep = args.sweep or args.sweep_values is not None
        knob = LENGTH_KNOBS.get(env.rpartition(":")[2]) if not args.env_factory else None
        if sweep and knob is None:
            raise ValueError(f"--sweep: env {env!r} has no length knob; sweeps exist for {', '.join(LENGTH_KNOBS)}")
        if sweep:
            values = knob.default_values(env_kwargs) if args.sweep_values is None else parse_values(args.sweep_values)
            points = [(v, knob.kwargs_at(env_kwargs, v)) for v in values]  # checks every value before running
        for mode in ("deterministic", "stochastic"):
            result[mode] = evaluate_policy(
                policy, env_source, args.episodes, deterministic=mode == "deterministic", env_kwargs=env_kwargs,
                seed=args.seed, device=device,
            )
        if sweep:
            rows = []
            for value, kw in points:
                row = {knob.name: value, "env_kwargs": kw}
                for mode in ("deterministic", "stochastic"):
                    row[mode] = evaluate_policy(policy, env_source, args.episodes, deterministic=mode == "deterministic",
                                                env_kwargs=kw, seed=args.seed, device=device)
                rows.append(row)
            plot = args.plot or os.path.join(
                args.checkpoint if os.path.isdir(args.checkpoint) else os.path.dirname(args.checkpoint) or ".",
                "generalisation.png")
            plot_sweep(rows, knob.name, knob.train_value(env_kwargs), f"{env}, core {cfg.core}", plot)
            result["sweep"] = {"knob": knob.name, "train_value": knob.train_value(env_kwargs), "points": rows,
                               "plot": plot}
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
        if "sweep" in result:
            print(sweep_table(result["sweep"]))
            print(f"plot: {result['sweep']['plot']}")
    return 0


def parse_values(text: str) -> list[int]:
    """``"50,100,200"`` -> ``[50, 100, 200]`` (``ValueError`` naming the option otherwise)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise ValueError(f"--sweep-values {text!r} is not valid: expected comma-separated integers, e.g. 50,100,200")
    return values


def sweep_table(sweep: dict) -> str:
    """The sweep as a Markdown table: knob value, then success rate (when reported) and mean return per mode."""
    name, rows = sweep["knob"], sweep["points"]
    has_success = "success_rate" in rows[0]["deterministic"]
    head = [name]
    for mode in ("det.", "stoch."):
        head += ([f"success {mode}"] if has_success else []) + [f"return {mode}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"{row[name]}" + (" (trained)" if row[name] == sweep["train_value"] else "")]
        for mode in ("deterministic", "stochastic"):
            r = row[mode]
            cells += ([f"{r['success_rate']:.3f}"] if has_success else []) + [f"{r['mean_return']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(rows: list[dict], name: str, train_value: int, title: str, path: str) -> None:
    """PNG: success rate (or mean return) against the knob, deterministic and stochastic; training value marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "success_rate" if "success_rate" in rows[0]["deterministic"] else "mean_return"
    xs = [row[name] for row in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for mode, style in (("deterministic", "o-"), ("stochastic", "s--")):
        ax.plot(xs, [row[mode][key] for row in rows], style, label=mode)
    ax.axvline(train_value, color="grey", lw=0.8, ls=":", label=f"trained ({name} {train_value})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel(name)
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
