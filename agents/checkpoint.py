"""Checkpoints of a PPO run: written atomically, loaded with clear errors, checked against the run's config.

A checkpoint is one ``torch.save`` file (``weights_only``-loadable: tensors, numbers, strings, lists, dicts)::

    {"format": "memory-cores-ppo/1", "config": {...TrainConfig fields...}, "policy": state_dict,
     "optimizer": state_dict, "update": int, "global_step": int, "torch_rng": ByteTensor,
     "observation_space": str, "action_space": str}

Writing goes to a temporary file in the same directory, ``fsync``, then ``os.replace``: a run killed while saving
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

FORMAT = "memory-cores-ppo/1"
CHECKPOINT_NAME = "checkpoint.pt"

# Fields that shape the policy or its inputs: they must match when resuming or evaluating.
STRUCTURAL = ("env", "env_kwargs", "core", "hidden_size", "core_kwargs", "embed_size", "shared_core", "normalize_obs",
              "head_hidden", "obs_skip", "head_activation")
NETWORK = STRUCTURAL[2:]
"""The options that define the network (all structural ones but the env): what ``--init-from`` must match."""


class CheckpointError(ValueError):
    """A missing, truncated or incompatible checkpoint (a user error: one clear line, no traceback)."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **payload}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file or the checkpoint of a run directory; :class:`CheckpointError` when it is missing,
    truncated, corrupt or not a PPO checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        msg = (str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__).rstrip(".")
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({msg})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a memory-cores PPO checkpoint (format {FORMAT})")
    return ckpt


def check_compatible(
    config: dict[str, Any], ckpt: dict[str, Any], path: str | Path = "checkpoint", names: tuple[str, ...] = STRUCTURAL
) -> None:
    """Raise :class:`CheckpointError` naming the first of ``names`` (default: every structural option) that differs
    from the checkpoint's."""
    saved = ckpt["config"]
    for name in names:
        if name in config and name in saved and config[name] != saved[name]:
            flag = "--" + name.replace("_", "-")
            raise CheckpointError(
                f"config does not fit checkpoint {path}: {flag} is {config[name]!r} but the checkpoint was trained "
                f"with {saved[name]!r}"
            )


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg)


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """A ``cls`` dataclass from a saved dict, ignoring fields that no longer exist."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
