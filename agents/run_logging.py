"""Run logging: JSON lines (``metrics.jsonl``), TensorBoard scalars with Stable-Baselines3's names, and a console
progress bar."""

from __future__ import annotations

import json
import math
import os
import struct
import time
from pathlib import Path
from typing import Any

# our metric name -> SB3-style TensorBoard tag
TB_NAMES = {
    "ep_rew_mean": "rollout/ep_rew_mean",
    "ep_len_mean": "rollout/ep_len_mean",
    "success_rate": "rollout/success_rate",
    "loss": "train/loss",
    "policy_gradient_loss": "train/policy_gradient_loss",
    "value_loss": "train/value_loss",
    "entropy_loss": "train/entropy_loss",
    "approx_kl": "train/approx_kl",
    "clip_fraction": "train/clip_fraction",
    "explained_variance": "train/explained_variance",
    "learning_rate": "train/learning_rate",
    "grad_norm": "train/grad_norm",
    "choice_approx_kl": "train/choice_approx_kl",
    "choice_entropy": "train/choice_entropy",
    "fps": "time/fps",
    "time_elapsed": "time/time_elapsed",
    "iterations": "time/iterations",
}


def _step_of(line: str) -> float:
    try:
        return float(json.loads(line)["global_step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")  # a half-written last line


def _event_files(tb_dir: Path) -> list[Path]:
    return sorted(tb_dir.glob("events.out.tfevents.*")) if tb_dir.is_dir() else []


def truncate_event_file(path: Path, last_step: int) -> None:
    """Keep the TensorBoard events of ``path`` up to and including step ``last_step``; drop later ones and a
    half-written last record; delete the file when no scalar is left. Records are copied byte for byte (a TFRecord
    is ``uint64 length, uint32 crc, data, uint32 crc``), so nothing is re-encoded."""
    from tensorboard.compat.proto.event_pb2 import Event

    data = path.read_bytes()
    kept, pos, summaries = [], 0, 0
    while pos + 12 <= len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + n + 4
        if end > len(data):
            break  # half-written by a killed run
        try:
            event = Event.FromString(data[pos + 12 : pos + 12 + n])
        except Exception:  # noqa: BLE001  a damaged record: stop there, as TensorBoard does
            break
        if event.step <= last_step:
            kept.append(data[pos:end])
            summaries += event.HasField("summary")
        pos = end
    if not summaries:
        path.unlink()
        return
    if sum(map(len, kept)) == len(data):
        return  # nothing to drop
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(b"".join(kept))
    os.replace(tmp, path)


class RunLogger:
    """Writes one JSON object per update to ``run_dir/metrics.jsonl`` and the same scalars to TensorBoard.

    The logs describe exactly one run, whatever happened before:

    * a fresh start (``start_step=None``) discards the rows and TensorBoard events left in ``run_dir`` by an earlier
      attempt (e.g. one killed before its first checkpoint, started again with the same command);
    * a resume (``start_step`` = the checkpoint's step) keeps the rows and events up to and including
      ``start_step`` and drops those a killed run logged after its last checkpoint, so the resumed run continues the
      curves with no duplicate and no gap (:meth:`flush` before each checkpoint makes sure every logged step is on
      disk when the checkpoint is).

    Args:
        run_dir: the run directory (created when missing).
        tensorboard: also write TensorBoard events (``run_dir/tb``).
        start_step: ``None`` for a fresh run, the checkpoint's ``global_step`` on resume.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, start_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.jsonl"
        tb_dir = self.run_dir / "tb"
        if start_step is None:
            path.unlink(missing_ok=True)
            for f in _event_files(tb_dir):
                f.unlink()
        else:
            if path.exists():
                keep = [line for line in path.read_text().splitlines() if _step_of(line) <= start_step]
                tmp = path.with_name(".metrics.jsonl.tmp")
                tmp.write_text("".join(line + "\n" for line in keep))
                os.replace(tmp, path)
            for f in _event_files(tb_dir):
                truncate_event_file(f, start_step)
        self.jsonl = open(path, "a", buffering=1)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # events after start_step are gone from the files; purge_step also tells a TensorBoard that already
            # loaded them to drop them (it purges steps >= purge_step, so start_step + 1 keeps the checkpoint's point)
            self.writer = SummaryWriter(str(tb_dir), purge_step=None if start_step is None else start_step + 1)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"global_step": step, "wall_time": time.time()}
        row.update({k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()})
        self.jsonl.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(TB_NAMES.get(k, f"custom/{k}"), v, step)

    def flush(self) -> None:
        """Put every logged row and event on disk (before a checkpoint: what a resume keeps is complete)."""
        self.jsonl.flush()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        self.jsonl.close()
        if self.writer is not None:
            self.writer.close()


class NullLogger:
    """What ranks other than 0 log to under torchrun: nothing (rank 0 writes the run's logs)."""

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Progress:
    """A tqdm bar over environment steps with steps/s, return and success in the postfix (no-op when disabled)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "") -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", unit_scale=True, desc=desc, dynamic_ncols=True)

    def update(self, n: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix({k: v for k, v in postfix.items() if v is not None}, refresh=False)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
