"""Agents built on memory cores.

* :mod:`agents.policy`: :class:`ActorCritic` (observation encoder -> any memory core or none -> policy/value heads).
* :mod:`agents.ppo`: :class:`TrainConfig`, :func:`compute_gae`, :class:`PPO` (recurrent PPO, rollouts on the device).
* :mod:`agents.runner`: :func:`train` (logging, checkpoints, resume, interruption).
* :mod:`agents.evaluation`: :func:`load_policy` (from a checkpoint alone) and :func:`evaluate_policy`.
* :mod:`agents.supervised`: the supervised harness for the NTM-paper sequence tasks.

The names below are imported lazily, so ``import agents`` stays cheap.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ActorCritic": "agents.policy",
    "TrainConfig": "agents.ppo",
    "PPO": "agents.ppo",
    "compute_gae": "agents.ppo",
    "train": "agents.runner",
    "evaluate_policy": "agents.evaluation",
    "load_policy": "agents.evaluation",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
