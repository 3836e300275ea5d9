#!/usr/bin/env python3
"""Figures of a PPO run: memory read/write weightings over one episode, and learning curves.

    python3 scripts/visualize.py weights runs/MemoryCores_TMaze-v0__ntm__1          # -> RUN_DIR/weights.png
    python3 scripts/visualize.py weights RUN_DIR/checkpoint.pt --seed 3 --out ntm_episode.png --stochastic
    python3 scripts/visualize.py curves runs/A runs/B --metrics ep_rew_mean success_rate --smooth 5

``weights`` loads a checkpoint of ``scripts/train.py`` (a file or a run directory), plays one episode of the
env it was trained on (one env, ``--seed``; the mode of the action distribution and greedy core choices unless
``--stochastic``) and draws, for every step ``t`` (x axis) and memory slot (y axis), the weightings found in the
core's state after the step:

* ``ntm``: the read weightings ``w^r_t`` (one panel per read head) and write weightings ``w^w_t`` (per write head);
* ``dnc``: the read weightings (per read head), the write weighting and the usage ``u_t``;
* ``rl_access``: the head pointer ``p_t`` (where reads and moves act), the slot written at step ``t`` (the head
  before the step for ``write_head``, the least-used slot for ``write_least_used``, from the chosen process),
  the usage ``u_t`` and the chosen access process per step;
* other cores (``lstm``, ``gru``, ...): the hidden state ``h_t`` per unit.

A strip at the top shows the actions and rewards of the episode. ``curves`` reads ``metrics.jsonl`` of one or
more run directories (one JSON object per PPO update) and plots the chosen metrics against environment steps,
one panel per metric, one line per run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DEFAULT_METRICS = ("ep_rew_mean", "success_rate", "ep_len_mean", "value_loss", "entropy_loss", "approx_kl", "fps")
# state fields drawn as [slot x time] heat maps, in this order
WEIGHT_FIELDS = ("read_weights", "head", "write_weights", "usage")
PANEL_ORDER = ("read_weights", "head", "write_weights", "written", "usage", "h")
FIELD_TITLES = {
    "read_weights": "read weighting",
    "write_weights": "write weighting",
    "usage": "usage u",
    "head": "head pointer p",
}


# ============================================================================================ episode recording
def find_fields(state: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The tensors of the (nested) NamedTuple ``state`` stored under the field names ``names`` (first found)."""
    found: dict[str, Any] = {}

    def walk(node: Any) -> None:
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            for name, value in zip(node._fields, node):
                if name in names and name not in found and hasattr(value, "shape"):
                    found[name] = value
                else:
                    walk(value)
        elif isinstance(node, (tuple, list)):
            for value in node:
                walk(value)

    walk(state)
    return found


def record_episode(checkpoint: str, seed: int = 0, deterministic: bool = True, max_steps: int = 1000,
                   env: str | None = None, env_kwargs: dict | None = None,
                   env_factory: str | None = None) -> dict[str, Any]:
    """Play one episode with the checkpoint's policy; returns per-step arrays.

    ``env`` (an id, ``module:EnvId`` too) or ``env_factory`` (``module:function``) replace the training env (its
    id or factory); ``env_kwargs`` default to the training ones when the env is the training env.

    Returns a dict with ``core`` (name), ``env``, ``actions`` ``[T]``, ``rewards`` ``[T]``, ``success`` (bool or
    None), ``panels``: list of ``(title, array [T, N])`` in drawing order, ``choices`` ``[T]`` and
    ``choice_names`` (cores with discrete choices; else None).
    """
    import torch

    from agents.env_adapter import TorchVecEnv, load_env_factory
    from agents.evaluation import env_for_checkpoint, load_policy

    if env and env_factory:
        raise ValueError("give --env or --env-factory, not both")
    policy, cfg, _ = load_policy(checkpoint, "cpu")
    if env_factory:
        source, env_id = load_env_factory(env_factory), env_factory
    elif env:
        source = env_id = env
    else:
        source, env_id = env_for_checkpoint(cfg), cfg.env_factory or cfg.env
    same = env_id in (cfg.env, cfg.env_factory)
    kwargs = cfg.env_kwargs_dict() if env_kwargs is None and same else dict(env_kwargs or {})
    venv = TorchVecEnv(source, 1, "cpu", kwargs, need_final_obs=False)
    core = policy.core
    names = getattr(core, "processes", None)
    obs = policy.normalize_obs(venv.reset(seed=seed))
    state = policy.initial_state(1)
    start = torch.ones(1, dtype=torch.bool)
    torch.manual_seed(seed)
    actions, rewards, choices = [], [], []
    fields: dict[str, list[np.ndarray]] = {}
    success = None
    with torch.no_grad():
        for _t in range(max_steps):
            prev = state.actor
            out = policy.get_action_and_value(obs, state, start, deterministic=deterministic)
            step = venv.step(policy.env_action(out.action))
            new = out.state.actor
            found = find_fields(new, WEIGHT_FIELDS)
            if not found:  # a plain recurrent core: its hidden state
                found = find_fields(new, ("h",))
            for name, value in found.items():
                arr = value[0].float().reshape(-1, value.shape[-1]).numpy()  # [heads, N] (or [1, N])
                fields.setdefault(name, []).append(arr)
            if out.choices is not None and names is not None:
                c = out.choices[0] if isinstance(out.choices, tuple) else out.choices
                c = int(c.reshape(-1)[0])
                choices.append(c)
                # the slot written at this step, from the chosen process (see memory_cores/rl_access.py)
                before = find_fields(prev, ("head", "usage"))
                written = np.zeros(before["head"].shape[-1], dtype=np.float32)
                if names[c] == "write_head":
                    written = before["head"][0].float().numpy()
                elif names[c] == "write_least_used":
                    written[int(before["usage"][0].argmin())] = 1.0
                fields.setdefault("written", []).append(written[None])
            actions.append(out.action.reshape(-1)[0].item())
            rewards.append(float(step.reward[0]))
            done = bool(step.terminated[0] | step.truncated[0])
            if done:
                if step.success is not None:
                    success = bool(step.success[0])
                break
            obs, start, state = policy.normalize_obs(step.obs), step.terminated | step.truncated, out.state
    venv.close()
    panels: list[tuple[str, np.ndarray]] = []
    for name in [f for f in PANEL_ORDER if f in fields]:
        seq = np.stack(fields[name])  # [T, heads, N]
        title = {"written": "slot written (from the chosen process)", "h": "hidden state h"}.get(
            name, FIELD_TITLES.get(name, name))
        if seq.shape[1] == 1:
            panels.append((title, seq[:, 0]))
        else:
            for i in range(seq.shape[1]):
                panels.append((f"{title}, head {i}", seq[:, i]))
    return dict(
        core=cfg.core, env=env_id, env_kwargs=kwargs, actions=np.asarray(actions), rewards=np.asarray(rewards),
        success=success, panels=panels, choices=np.asarray(choices) if choices else None,
        choice_names=list(names) if choices and names is not None else None,
    )


def plot_episode(ep: dict[str, Any], out: str | Path, title: str = "") -> Path:
    """Draw :func:`record_episode`'s result to the PNG ``out``."""
    T = len(ep["actions"])
    n_rows = 1 + len(ep["panels"]) + (1 if ep["choices"] is not None else 0)
    heights = [1.0] + [2.2 if p[1].shape[1] > 16 else 1.4 for p in ep["panels"]]
    if ep["choices"] is not None:
        heights.append(1.2)
    fig, axes = plt.subplots(n_rows, 1, figsize=(max(6.0, min(18.0, 3 + 0.12 * T)), 1.0 + 1.1 * sum(heights)),
                             sharex=True, gridspec_kw={"height_ratios": heights}, squeeze=False)
    axes = axes[:, 0]
    t = np.arange(T)
    ax = axes[0]
    ax.step(t, ep["actions"], where="mid", color="tab:blue", label="action")
    ax.set_ylabel("action", color="tab:blue")
    if T:
        ax.set_ylim(float(np.min(ep["actions"])) - 0.5, float(np.max(ep["actions"])) + 0.5)
    ax2 = ax.twinx()
    ax2.bar(t, ep["rewards"], color="tab:orange", alpha=0.6, width=0.8, label="reward")
    ax2.set_ylabel("reward", color="tab:orange")
    outcome = "" if ep["success"] is None else (", success" if ep["success"] else ", failure")
    ax.set_title(title or f"{ep['core']} on {ep['env']}: one episode, {T} steps, return "
                          f"{ep['rewards'].sum():.3f}{outcome}", fontsize=10)
    for ax, (name, arr) in zip(axes[1:], ep["panels"]):
        vmax = 1.0 if not name.startswith("hidden") else None
        im = ax.imshow(arr.T, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis",
                       vmin=0.0 if vmax else None, vmax=vmax, extent=(-0.5, T - 0.5, -0.5, arr.shape[1] - 0.5))
        ax.set_ylabel("unit" if name.startswith("hidden") else "slot")
        ax.set_title(name, fontsize=9, loc="left")
        fig.colorbar(im, ax=ax, pad=0.01, fraction=0.03)
    if ep["choices"] is not None:
        ax = axes[-1]
        names = ep["choice_names"]
        ax.scatter(t, ep["choices"], s=12, color="tab:green")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_ylim(-0.5, len(names) - 0.5)
        ax.set_title("access process chosen", fontsize=9, loc="left")
    axes[-1].set_xlabel("step t")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# ============================================================================================== learning curves
def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``run_dir/metrics.jsonl`` (a file path works too). Unreadable lines (a run being written) are
    skipped; when ``global_step`` goes back (a resumed run), the rows it replaces are dropped."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no metrics file: {path} (a run directory of scripts/train.py has metrics.jsonl)")
    rows: list[dict[str, Any]] = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(row, dict) or "global_step" not in row:
                continue
            while rows and rows[-1]["global_step"] >= row["global_step"]:
                rows.pop()
            rows.append(row)
    return rows


def smooth(y: np.ndarray, k: int) -> np.ndarray:
    """Trailing moving average over ``k`` points, NaNs ignored (``k <= 1``: unchanged)."""
    if k <= 1 or len(y) == 0:
        return y
    out = np.empty_like(y)
    for i in range(len(y)):
        w = y[max(0, i - k + 1): i + 1]
        w = w[np.isfinite(w)]
        out[i] = w.mean() if len(w) else np.nan
    return out


def plot_curves(run_dirs: list[str], out: str | Path, metrics: list[str] | None = None, k: int = 1) -> Path:
    """One panel per metric (those present in any run), one line per run, x = environment steps."""
    runs = [(Path(d).name if Path(d).is_dir() else Path(d).parent.name, read_metrics(d)) for d in run_dirs]
    present = {k for _, rows in runs for row in rows for k in row}
    names = [m for m in (metrics or DEFAULT_METRICS) if m in present]
    if not names:
        raise ValueError(f"none of the metrics {list(metrics or DEFAULT_METRICS)} is in the runs; present: "
                         f"{', '.join(sorted(present - {'global_step', 'wall_time'}))}")
    cols = min(3, len(names))
    rows_n = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.2 * rows_n), squeeze=False)
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        for label, rows in runs:
            pts = [(r["global_step"], r[name]) for r in rows if isinstance(r.get(name), (int, float))]
            if not pts:
                continue
            x, y = np.asarray(pts, dtype=float).T
            ax.plot(x, smooth(y, k), label=label, lw=1.4)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
        if name == "success_rate":
            ax.set_ylim(-0.02, 1.02)
    for j in range(len(names), rows_n * cols):
        axes[j // cols][j % cols].axis("off")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# =========================================================================================================== CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("weights", help="read/write weightings (and usage) of a memory core over one episode")
    w.add_argument("checkpoint", help="checkpoint file or run directory of scripts/train.py")
    w.add_argument("--out", default="", help="PNG path (default: RUN_DIR/weights.png)")
    w.add_argument("--seed", type=int, default=0, help="env seed of the episode (default 0)")
    w.add_argument("--stochastic", action="store_true", help="sample actions and core choices (default: mode/greedy)")
    w.add_argument("--max-steps", type=int, default=1000, help="stop after this many steps (default 1000)")
    w.add_argument("--env", default=None, help="env id, or module:EnvId (default: the training env)")
    w.add_argument("--env-factory", default=None,
                   help="module:function returning one gymnasium.Env, instead of --env (default: the training one)")
    w.add_argument("--env-kwargs", default=None, help="JSON env keywords (default: the training ones)")
    c = sub.add_parser("curves", help="learning curves from run directories (metrics.jsonl)")
    c.add_argument("runs", nargs="+", help="run directories (or metrics.jsonl files)")
    c.add_argument("--out", default="", help="PNG path (default: FIRST_RUN_DIR/curves.png)")
    c.add_argument("--metrics", nargs="+", default=None,
                   help=f"metrics to plot, those present (default: {' '.join(DEFAULT_METRICS)})")
    c.add_argument("--smooth", type=int, default=1, help="moving-average window in updates (default 1: none)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from agents.checkpoint import CheckpointError

    try:
        if args.command == "weights":
            if args.max_steps <= 0:
                raise ValueError(f"--max-steps {args.max_steps} is not valid: expected a positive integer")
            env_kwargs = None
            if args.env_kwargs is not None:
                try:
                    env_kwargs = json.loads(args.env_kwargs)
                except json.JSONDecodeError as e:
                    raise ValueError(f"--env-kwargs {args.env_kwargs!r} is not valid JSON: {e}") from None
                if not isinstance(env_kwargs, dict):
                    raise ValueError(f"--env-kwargs {args.env_kwargs!r} must be a JSON object")
            ep = record_episode(args.checkpoint, args.seed, not args.stochastic, args.max_steps, args.env, env_kwargs,
                                args.env_factory)
            ckpt = Path(args.checkpoint)
            run_dir = ckpt if ckpt.is_dir() else ckpt.parent
            out = plot_episode(ep, args.out or run_dir / "weights.png")
            print(f"wrote {out} ({ep['core']}, {len(ep['actions'])} steps, return {ep['rewards'].sum():.3f})")
        else:
            if args.smooth < 1:
                raise ValueError(f"--smooth {args.smooth} is not valid: expected an integer >= 1")
            first = Path(args.runs[0])
            out = plot_curves(args.runs, args.out or (first if first.is_dir() else first.parent) / "curves.png",
                              args.metrics, args.smooth)
            print(f"wrote {out}")
    except (ValueError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
