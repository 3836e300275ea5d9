"""Train Tianshou's PPO on a project task with a chosen memory core (``agents/tianshou.py``).

    python3 scripts/train_tianshou.py --env MemoryCores/TMaze-v0 --env-kwargs '{"length": 4}' --core lstm \
        --stack-num 8 --epochs 5 --epoch-steps 4000
    python3 scripts/train_tianshou.py --env my_envs:MyEnv-v0 ...        # imports my_envs, which registers MyEnv-v0
    python3 scripts/train_tianshou.py --env-factory my_envs:make_env    # a function returning one gymnasium.Env

Tianshou trains recurrent nets on windows of ``--stack-num`` observations started from the core's initial state
(see the docstring of ``agents/tianshou.py``): a cue further back than the window cannot be learned. Prints one
line per epoch (unless ``--quiet``) and a JSON line with the final greedy test return and the fraction of test
episodes with a positive return (the success rate on the T-maze with its default rewards).
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np
import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="MemoryCores/TMaze-v0",
                   help="a Gymnasium id with a Discrete action space; module:EnvId imports module first")
    p.add_argument("--env-factory", default="",
                   help="module:function returning one gymnasium.Env (wrappers included), called with --env-kwargs; "
                        "used instead of --env")
    p.add_argument("--env-kwargs", default="{}", help="JSON dict of keyword arguments for the env")
    p.add_argument("--core", default="lstm", help="a name in memory_cores.CORES")
    p.add_argument("--core-kwargs", default="{}", help="JSON dict for the core's constructor")
    p.add_argument("--embed-size", type=int, default=64, help="encoder output width (the core's input)")
    p.add_argument("--stack-num", type=int, default=8, help="training window: observations per sample")
    p.add_argument("--num-envs", type=int, default=8, help="training envs (DummyVectorEnv)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--epoch-steps", type=int, default=4000, help="env steps per epoch")
    p.add_argument("--collect-steps", type=int, default=512, help="env steps per collection (one PPO update)")
    p.add_argument("--repeat", type=int, default=4, help="PPO epochs per update")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--ent-coef", type=float, default=0.01)
    p.add_argument("--test-episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress output from Tianshou")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    import envs  # noqa: F401  (registers MemoryCores/*)
    from tianshou.data import Collector, VectorReplayBuffer
    from tianshou.env import DummyVectorEnv
    from tianshou.trainer import OnPolicyTrainerParams

    from agents.tianshou import CoreActor, CoreCritic, make_ppo

    from agents.env_adapter import EnvError, load_env_factory, resolve_spec

    try:
        env_kwargs = json.loads(args.env_kwargs)
        core_kwargs = json.loads(args.core_kwargs)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: --env-kwargs / --core-kwargs is not valid JSON: {e}") from None
    try:
        factory = load_env_factory(args.env_factory) if args.env_factory else None
        if factory is None:
            resolve_spec(args.env)  # one clear line for an unknown id or a module that cannot be imported
    except EnvError as e:
        raise SystemExit(f"error: {e}") from None
    env_name = args.env_factory or args.env

    def make_env() -> gym.Env:
        return factory(**env_kwargs) if factory is not None else gym.make(args.env, **env_kwargs)

    try:
        probe = make_env()
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: bad --env-kwargs {args.env_kwargs} for {env_name}: {e}") from None
    if not isinstance(probe.action_space, gym.spaces.Discrete):
        raise SystemExit(f"error: {env_name}: Tianshou's discrete PPO needs a Discrete action space, got "
                         f"{probe.action_space}")
    train_envs = DummyVectorEnv([make_env for _ in range(args.num_envs)])
    test_envs = DummyVectorEnv([make_env for _ in range(min(args.num_envs, args.test_episodes))])
    train_envs.seed(args.seed)
    test_envs.seed(args.seed + 10_000)

    net_kwargs = dict(core=args.core, core_kwargs=core_kwargs, embed_size=args.embed_size)
    actor = CoreActor(probe.observation_space, int(probe.action_space.n), **net_kwargs)
    critic = CoreCritic(probe.observation_space, **net_kwargs)
    algorithm = make_ppo(actor, critic, probe.action_space, lr=args.lr, ent_coef=args.ent_coef)

    buffer = VectorReplayBuffer(args.collect_steps, args.num_envs, stack_num=args.stack_num)
    train_collector = Collector(algorithm, train_envs, buffer)
    test_collector = Collector(algorithm, test_envs)
    train_collector.reset()
    test_collector.reset()

    t0 = time.time()
    result = algorithm.run_training(
        OnPolicyTrainerParams(
            training_collector=train_collector,
            test_collector=test_collector,
            max_epochs=args.epochs,
            epoch_num_steps=args.epoch_steps,
            collection_step_num_env_steps=args.collect_steps,
            update_step_num_repetitions=args.repeat,
            batch_size=args.batch_size,
            test_step_num_episodes=args.test_episodes,
            verbose=not args.quiet,
            show_progress=not args.quiet,
        )
    )
    elapsed = time.time() - t0
    test = test_collector.collect(n_episode=args.test_episodes, reset_before_collect=True)
    out = {
        "env": env_name,
        "core": args.core,
        "stack_num": args.stack_num,
        "env_steps": int(result.train_step),
        "updates": int(result.update_step),
        "seconds": round(elapsed, 1),
        "test_return_mean": float(test.returns_stat.mean) if test.returns_stat is not None else float("nan"),
        # T-maze with default rewards: return 1 iff the cued arm was entered, so this is the success rate
        "test_positive_return_fraction": float(np.mean(np.asarray(test.returns) > 0)) if len(test.returns) else float("nan"),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
