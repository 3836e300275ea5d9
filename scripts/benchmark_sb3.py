"""Memory cores inside sb3-contrib RecurrentPPO (``agents/sb3.py``): throughput and T-maze success.

    python3 scripts/benchmark_sb3.py --threads 1

1. Throughput (env steps per second of ``model.learn``: collection and PPO updates together) of
   ``MemoryCorePolicy(core="lstm")`` against the stock ``MlpLstmPolicy`` of the same size (one LSTM of
   ``--hidden`` units for the actor and one for the critic, the same MLP heads and PPO settings), and of the NTM and
   DNC cores at their default sizes.
2. T-maze success (``MemoryCores/TMaze-v0``, corridor ``--length``): the two LSTM policies trained for
   ``--train-steps`` env steps per seed, then ``--eval-episodes`` greedy episodes each (state carried by
   ``predict``); success = the cued arm was entered.

Prints one line per measurement and a summary table; ``--json`` also writes the figures to a file.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--hidden", type=int, default=128, help="LSTM units (stock and core) for the comparison")
    p.add_argument("--length", type=int, default=3, help="T-maze corridor length L")
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--n-steps", type=int, default=64, help="rollout length per env (RecurrentPPO n_steps)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-epochs", type=int, default=4)
    p.add_argument("--throughput-steps", type=int, default=4096, help="env steps timed per throughput entry")
    p.add_argument("--memory-cores", nargs="*", default=["ntm", "dnc"], help="cores timed at default sizes")
    p.add_argument("--train-steps", type=int, default=30_000, help="env steps per seed for the success check")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds used: first-seed .. first-seed + seeds - 1")
    p.add_argument("--eval-episodes", type=int, default=100)
    p.add_argument("--skip-success", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def make_model(kind: str, args: argparse.Namespace, seed: int, core_kwargs: dict | None = None):
    """``kind``: ``"stock"`` (MlpLstmPolicy) or a core name (MemoryCorePolicy)."""
    import gymnasium as gym
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    import agents.sb3 as sb3
    import envs  # noqa: F401

    def make_env():
        env = gym.make("MemoryCores/TMaze-v0", length=args.length)
        return env if kind == "stock" else sb3.wrap_env_for_core(env, kind, core_kwargs)

    venv = DummyVecEnv([make_env] * args.n_envs)
    ppo = dict(n_steps=args.n_steps, batch_size=args.batch_size, n_epochs=args.n_epochs, ent_coef=0.01,
               learning_rate=1e-3, seed=seed, device="cpu", verbose=0)
    net_arch = dict(pi=[64], vf=[64])
    if kind == "stock":
        policy_kwargs = dict(lstm_hidden_size=args.hidden, net_arch=net_arch)  # actor LSTM + critic LSTM (default)
        return RecurrentPPO("MlpLstmPolicy", venv, policy_kwargs=policy_kwargs, **ppo)
    policy_kwargs = dict(core=kind, core_kwargs=core_kwargs or {}, net_arch=net_arch)  # actor core + critic core
    return RecurrentPPO("MemoryCorePolicy", venv, policy_kwargs=policy_kwargs, **ppo)


def throughput(kind: str, args: argparse.Namespace, core_kwargs: dict | None = None) -> dict:
    model = make_model(kind, args, seed=0, core_kwargs=core_kwargs)
    per_iter = args.n_steps * args.n_envs
    model.learn(per_iter)  # warm-up: one rollout and one update
    steps = max(per_iter, args.throughput_steps // per_iter * per_iter)
    t0, c0 = time.perf_counter(), time.process_time()
    model.learn(steps, reset_num_timesteps=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    state_floats = 2 * model.policy.lstm_actor.hidden_size
    return dict(kind=kind, core_kwargs=core_kwargs or {}, steps=steps, seconds=round(wall, 2),
                steps_per_s=round(steps / wall, 1), steps_per_cpu_s=round(steps / cpu, 1),
                buffer_state_bytes_per_env_step=2 * state_floats * 4,
                params=sum(p.numel() for p in model.policy.parameters()))


def success_rate(model, args: argparse.Namespace, episodes: int, seed: int) -> float:
    import gymnasium as gym

    import agents.sb3 as sb3
    import envs  # noqa: F401

    env = gym.make("MemoryCores/TMaze-v0", length=args.length)
    if hasattr(model.policy, "core_name"):
        env = sb3.wrap_env_for_core(env, model.policy.core_name, model.policy.core_kwargs)
    wins = 0
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        state, start, done, info = None, np.array([True]), False, {}
        while not done:
            action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
            obs, _, term, trunc, info = env.step(action)
            start, done = np.array([False]), term or trunc
        wins += bool(info.get("success", False))
        obs, _ = env.reset()
    return wins / episodes


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import sb3_contrib
    import stable_baselines3

    header = (f"# sb3 {stable_baselines3.__version__}, sb3-contrib {sb3_contrib.__version__}, torch {torch.__version__}, "
              f"{args.threads} torch thread(s), {platform.processor() or platform.machine()}; TMaze L={args.length}, "
              f"n_envs={args.n_envs}, n_steps={args.n_steps}, batch_size={args.batch_size}, n_epochs={args.n_epochs}")
    print(header, flush=True)
    results: dict = {"header": header, "args": vars(args), "throughput": [], "success": []}

    entries = [("stock", None), ("lstm", dict(hidden_size=args.hidden))]
    entries += [(name, None) for name in args.memory_cores]
    for kind, kw in [] if args.skip_throughput else entries:
        r = throughput(kind, args, kw)
        results["throughput"].append(r)
        print(f"throughput {kind:6s} {r['steps_per_s']:8.1f} steps/s (CPU-time rate {r['steps_per_cpu_s']:.1f}), "
              f"{r['params']} parameters, state in buffer {r['buffer_state_bytes_per_env_step']} B/env step", flush=True)
    if not args.skip_throughput:
        by_kind = {r["kind"]: r for r in results["throughput"]}
        ratio = by_kind["stock"]["steps_per_s"] / by_kind["lstm"]["steps_per_s"]
        results["stock_over_core_lstm"] = round(ratio, 3)
        print(f"stock MlpLstmPolicy / MemoryCorePolicy(lstm) throughput: {ratio:.2f}x", flush=True)

    if not args.skip_success:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for kind, kw in entries[:2]:
                model = make_model(kind, args, seed=seed, core_kwargs=kw)
                t0 = time.perf_counter()
                model.learn(args.train_steps)
                s = success_rate(model, args, args.eval_episodes, seed=1000 + seed)
                r = dict(kind=kind, seed=seed, train_steps=args.train_steps, success=s,
                         seconds=round(time.perf_counter() - t0, 1))
                results["success"].append(r)
                print(f"success    {kind:6s} seed {seed}: {s:.2f} after {args.train_steps} steps ({r['seconds']} s)",
                      flush=True)
        for kind in ("stock", "lstm"):
            rates = [r["success"] for r in results["success"] if r["kind"] == kind]
            print(f"success    {kind:6s} mean {np.mean(rates):.2f} over {len(rates)} seeds: {rates}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
