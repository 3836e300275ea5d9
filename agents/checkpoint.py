"""Checkpoints of a PPO run: checksummed, written atomically with the previous one kept, loaded with clear errors,
checked against the run's config.

A checkpoint file is one ASCII header line followed by the bytes of ``torch.save`` of the payload::

    memory-cores-ppo/2 sha256=<64 hex digits> bytes=<payload length>\\n
    <torch.save({"format": "memory-cores-ppo/2", "config": {...TrainConfig fields...}, "policy": state_dict,
                 "optimizer": state_dict, "update": int, "global_step": int, "train_seconds": float,
                 "torch_rng": ByteTensor, "observation_space": str, "action_space": str, ...})>

The payload is ``weights_only``-loadable (tensors, numbers, strings, lists, dicts). :func:`load_checkpoint` checks
the length and the SHA-256 before unpickling anything, so a truncated or overwritten file is refused in one line
(:class:`CheckpointError`) instead of loading damaged weights or optimizer state. Files of the first format (a bare
``torch.save`` zip with ``"format": "memory-cores-ppo/1"``) still load; they carry no checksum, so only damage that
breaks the zip or puts non-finite values into the weights or the optimizer state can be detected in them.

Writing (:func:`save_checkpoint`) refuses a payload whose policy or optimizer tensors are not finite
(:class:`NonFiniteStateError`), writes to a temporary file in the same directory with ``fsync``, keeps the current
checkpoint as ``checkpoint.prev.pt`` (hard link, or copy, then ``os.replace``; only when it verifies, so the previous
checkpoint is always a good one) and then ``os.replace``-s the new file over ``checkpoint.pt``. A run killed at any
moment leaves a complete ``checkpoint.pt``.

Resuming (:func:`load_run_checkpoint`, used by ``--resume``): when ``checkpoint.pt`` is missing or fails verification
and ``checkpoint.prev.pt`` is good, the run continues from the previous checkpoint with a printed warning (at most
``--checkpoint-every`` updates are redone; the damaged file is replaced at the next checkpoint). This is what an
unattended restart needs, and what a person would do by hand anyway. Loading a file or run directory anywhere else
(``evaluate.py``, ``--init-from``) never falls back silently: the error names the previous checkpoint to use instead.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

FORMAT = "memory-cores-ppo/2"
OLD_FORMAT = "memory-cores-ppo/1"
CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.prev.pt"
REQUIRED_KEYS = ("config", "policy", "optimizer", "update", "global_step")
"""Keys every checkpoint has (older ones may lack ``ppo_state``, ``train_seconds`` and the space specs)."""
_MAGIC = FORMAT.encode() + b" "
_MAX_HEADER = 256

# Fields that shape the policy or its inputs: they must match when resuming or evaluating.
STRUCTURAL = ("env", "env_kwargs", "core", "hidden_size", "core_kwargs", "embed_size", "shared_core", "normalize_obs",
              "head_hidden", "obs_skip", "head_activation")
NETWORK = STRUCTURAL[2:]
"""The options that define the network (all structural ones but the env): what ``--init-from`` must match."""


class CheckpointError(ValueError):
    """A missing, truncated, corrupt or incompatible checkpoint (a user error: one clear line, no traceback)."""


class NonFiniteStateError(RuntimeError):
    """:func:`save_checkpoint` refused a payload whose policy or optimizer state holds NaN or inf."""


# ============================================================================================================ writing
def encode_checkpoint(payload: dict[str, Any]) -> bytes:
    """The bytes of a checkpoint file: the header line and ``torch.save({"format": FORMAT, **payload})``."""
    buf = io.BytesIO()
    torch.save({**payload, "format": FORMAT}, buf)
    body = buf.getvalue()
    header = _MAGIC + f"sha256={hashlib.sha256(body).hexdigest()} bytes={len(body)}\n".encode()
    return header + body


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically, keeping the current (verified) file as ``checkpoint.prev.pt``.

    Raises :class:`NonFiniteStateError` (and writes nothing) when a policy or optimizer tensor is not finite.
    """
    path = Path(path)
    bad = non_finite_entry(payload)
    if bad is not None:
        raise NonFiniteStateError(f"{bad} is not finite; checkpoint {path} not written")
    data = encode_checkpoint(payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if path.exists() and _verifies(path):
        prev = previous_path(path)
        prev_tmp = prev.with_name(f".{prev.name}.tmp{os.getpid()}")
        prev_tmp.unlink(missing_ok=True)
        try:
            os.link(path, prev_tmp)  # checkpoint.pt stays in place: there is always a complete checkpoint
        except OSError:
            shutil.copyfile(path, prev_tmp)
        os.replace(prev_tmp, prev)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def previous_path(path: str | Path) -> Path:
    """Where the checkpoint before ``path`` is kept (``checkpoint.pt`` -> ``checkpoint.prev.pt``)."""
    path = Path(path)
    if path.name == CHECKPOINT_NAME:
        return path.with_name(PREVIOUS_NAME)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def non_finite_entry(payload: dict[str, Any]) -> str | None:
    """The name of the first policy or optimizer tensor of ``payload`` with a NaN or inf, or None when all are finite
    (one host sync for all tensors)."""
    named: list[tuple[str, torch.Tensor]] = []
    for k, v in (payload.get("policy") or {}).items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            named.append((f"policy tensor {k!r}", v))
    for i, state in (payload.get("optimizer") or {}).get("state", {}).items():
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                named.append((f"optimizer state {k!r} of parameter {i}", v))
    if not named:
        return None
    flags = [torch.isfinite(v).all() for _, v in named]  # 0-dim bool tensors on each tensor's device
    by_device: dict[torch.device, list[int]] = {}
    for i, f in enumerate(flags):
        by_device.setdefault(f.device, []).append(i)
    ok = [True] * len(named)
    for idx in by_device.values():
        for i, v in zip(idx, torch.stack([flags[i] for i in idx]).cpu().tolist()):
            ok[i] = v
    return next((name for (name, _), good in zip(named, ok) if not good), None)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ============================================================================================================ reading
def _read_body(path: Path, data: bytes) -> tuple[bytes, bool]:
    """The ``torch.save`` bytes of a checkpoint file and whether they carried a verified checksum; raises
    :class:`CheckpointError` for a damaged or foreign file."""
    if data.startswith(_MAGIC):
        end = data.find(b"\n", 0, _MAX_HEADER)
        parts = data[len(_MAGIC) : end].decode("ascii", "replace").split(" ") if end > 0 else []
        fields_ = dict(p.split("=", 1) for p in parts if "=" in p)
        digest, length = fields_.get("sha256", ""), fields_.get("bytes", "")
        if end < 0 or len(digest) != 64 or not length.isdigit():
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt (damaged header)")
        body = data[end + 1 :]
        if len(body) != int(length):
            raise CheckpointError(
                f"checkpoint {path} is truncated or corrupt ({len(body):,} payload bytes, the header says {int(length):,})"
            )
        if hashlib.sha256(body).hexdigest() != digest:
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt (SHA-256 checksum mismatch)")
        return body, True
    if len(data) <= len(_MAGIC) and _MAGIC.startswith(data) and data:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({len(data)} bytes)")
    if data.startswith(b"PK\x03\x04"):  # a torch zip: the first format, no checksum
        return data, False
    raise CheckpointError(f"{path} is not a memory-cores PPO checkpoint ({len(data):,} bytes, no {FORMAT} header)")


def _verifies(path: Path) -> bool:
    """Whether ``path`` is a checkpoint of the current format whose checksum matches (no unpickling)."""
    try:
        _, checked = _read_body(path, path.read_bytes())
    except (CheckpointError, OSError):
        return False
    return checked


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file or the checkpoint of a run directory; :class:`CheckpointError` in one line when it is
    missing, truncated, corrupt (checksum), holds non-finite weights or is not a PPO checkpoint. When it is a run's
    ``checkpoint.pt`` and the previous checkpoint beside it is good, the message names that one."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    try:
        return _load_file(path, map_location)
    except CheckpointError as e:
        prev = previous_path(path)
        if path.name == CHECKPOINT_NAME and prev.exists():
            try:
                good = _load_file(prev, map_location)
            except CheckpointError:
                raise e from None
            raise CheckpointError(
                f"{e}; the previous checkpoint {prev} (update {good['update']}) is good: pass that file, or "
                f"--resume, which continues from it"
            ) from None
        raise


def load_run_checkpoint(
    run_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], Path, str | None]:
    """The checkpoint to resume ``run_dir`` from: ``(payload, file, warning)``.

    ``checkpoint.pt`` when it loads; else ``checkpoint.prev.pt`` when that one is good, with a one-line ``warning``
    to print; else :class:`CheckpointError` (naming the run directory when it holds no checkpoint at all).
    """
    run_dir = Path(run_dir)
    path, prev = run_dir / CHECKPOINT_NAME, run_dir / PREVIOUS_NAME
    if not path.exists() and not prev.exists():
        raise CheckpointError(f"no checkpoint in {run_dir} to resume (no {CHECKPOINT_NAME})")
    try:
        return _load_file(path, map_location), path, None
    except CheckpointError as e:
        if not prev.exists():
            raise
        try:
            good = _load_file(prev, map_location)
        except CheckpointError as e_prev:
            raise CheckpointError(f"{e}; the previous one is damaged too ({e_prev})") from None
        reason = str(e).removeprefix(f"checkpoint {path} ")
        return good, prev, (
            f"{path} {reason}: resuming from the previous checkpoint {prev} (update {good['update']}, "
            f"{good['global_step']:,} steps); {CHECKPOINT_NAME} is replaced at the next checkpoint"
        )


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint (current or previous)."""
    run_dir = Path(run_dir)
    return (run_dir / CHECKPOINT_NAME).exists() or (run_dir / PREVIOUS_NAME).exists()


def _load_file(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read ({e.strerror or e})") from None
    body, checked = _read_body(path, data)
    try:
        ckpt = torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001  any damage inside the zip or the pickle: KeyError, struct.error, ...
        text = str(e).strip()
        msg = (text.splitlines()[0].split(". ")[0][:120] if text else type(e).__name__).rstrip(".")
        what = "cannot be read by this torch version" if checked else "is truncated or corrupt"
        raise CheckpointError(f"checkpoint {path} {what} ({msg})") from None
    expected = FORMAT if checked else OLD_FORMAT
    if not isinstance(ckpt, dict) or ckpt.get("format") != expected:
        raise CheckpointError(f"{path} is not a memory-cores PPO checkpoint (format {FORMAT})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete (no {', '.join(missing)})")
    kinds = dict(config=dict, policy=dict, optimizer=dict, update=int, global_step=int)
    for k, kind in kinds.items():
        if not isinstance(ckpt[k], kind) or isinstance(ckpt[k], bool):
            raise CheckpointError(f"checkpoint {path} is corrupt ({k!r} is a {type(ckpt[k]).__name__})")
    bad = non_finite_entry(ckpt)
    if bad is not None:
        raise CheckpointError(f"checkpoint {path} is corrupt ({bad} is not finite)")
    return ckpt


# ====================================================================================================== compatibility
def check_compatible(
    config: dict[str, Any], ckpt: dict[str, Any], path: str | Path = "checkpoint", names: tuple[str, ...] = STRUCTURAL
) -> None:
    """Raise :class:`CheckpointError` naming the first of ``names`` (default: every structural option) that differs
    from the checkpoint's."""
    saved = ckpt["config"]
    for name in names:
        if name in config and name in saved and _option_value(name, config[name]) != _option_value(name, saved[name]):
            flag = "--" + name.replace("_", "-")
            raise CheckpointError(
                f"config does not fit checkpoint {path}: {flag} is {config[name]!r} but the checkpoint was trained "
                f"with {saved[name]!r}"
            )


def _option_value(name: str, value: Any) -> Any:
    """JSON options (``--env-kwargs``, ``--core-kwargs``) compare as data: key order and spacing do not matter."""
    if name.endswith("_kwargs") and isinstance(value, str):
        try:
            return json.loads(value or "{}")
        except json.JSONDecodeError:
            return value
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return asdict(cfg)


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """A ``cls`` dataclass from a saved dict, ignoring fields that no longer exist."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})
