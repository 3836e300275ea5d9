"""Run logging: JSON lines (``metrics.jsonl``), TensorBoard scalars with Stable-Baselines3's names, and a console
progress bar."""

from __future__ import annotations

import json
import math
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
    "choice_loss": "train/choice_loss",
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


class RunLogger:
    """Writes one JSON object per update to ``run_dir/metrics.jsonl`` and the same scalars to TensorBoard.

    Args:
        run_dir: the run directory.
        tensorboard: also write TensorBoard events (``run_dir/tb``).
        start_step: on resume, TensorBoard events after this step from the killed run are purged.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, start_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / "metrics.jsonl"
        if start_step is not None and path.exists():
            # resuming: drop the rows a killed run logged after its last checkpoint
            keep = [line for line in path.read_text().splitlines() if _step_of(line) <= start_step]
            path.write_text("".join(line + "\n" for line in keep))
        self.jsonl = open(path, "a", buffering=1)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_step)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"global_step": step, "wall_time": time.time()}
        row.update({k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()})
        self.jsonl.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(TB_NAMES.get(k, f"custom/{k}"), v, step)

    def close(self) -> None:
        self.jsonl.close()
        if self.writer is not None:
            self.writer.close()


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
