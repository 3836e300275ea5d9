"""The supervised harness: task formats, loss / bit-error accounting, a short training run, the CLI."""

from __future__ import annotations

import json
import os

import pytest
import torch

from agents.supervised import (
    SequenceModel,
    TrainConfig,
    bit_errors,
    evaluate,
    masked_bce,
    peak_initial_weightings,
    record_weightings,
    slots_stay_identical,
    train,
)
from envs.sequence_data import AssociativeRecallTask, CopyTask, RepeatCopyTask, make_task
from memory_cores import make_core

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_copy_layout_row_by_row():
    task = CopyTask(num_bits=8, min_length=1, max_length=20)
    b = task.sample(16, generator=gen())
    T, B, _ = b.inputs.shape
    assert b.inputs.shape[2] == 10 and b.targets.shape == (T, B, 8) and b.mask.shape == (T, B)
    assert T == 2 * int(b.sizes.max()) + 2
    for r in range(B):
        L = int(b.sizes[r])
        x, y, m = b.inputs[:, r], b.targets[:, r], b.mask[:, r]
        assert x[0, 8] == 1 and x[0, :8].abs().sum() == 0  # start flag only
        assert x[L + 1, 9] == 1 and x[L + 1, :9].abs().sum() == 0  # delimiter only
        assert torch.equal(y[L + 2 : 2 * L + 2], x[1 : L + 1, :8])  # the output is the input sequence
        assert x[L + 2 :].abs().sum() == 0  # zero input during the answer and the padding
        assert m.sum() == L and m[L + 2 : 2 * L + 2].all()
        assert y[m == 0].abs().sum() == 0
    assert set(b.inputs[..., :8].unique().tolist()) <= {0.0, 1.0}


def test_fixed_size_and_device_and_reproducible():
    task = CopyTask()
    b = task.sample(4, size=40, generator=gen(1))
    assert (b.sizes == 40).all() and b.inputs.shape[0] == 82 and (b.mask.sum(0) == 40).all()
    again = task.sample(4, size=40, generator=gen(1))
    assert torch.equal(b.inputs, again.inputs)
    small = task.sample(64, max_size=3, generator=gen(2))
    assert int(small.sizes.max()) <= 3


def test_repeat_copy_layout():
    task = RepeatCopyTask(num_bits=4, max_length=5, max_repeats=4)
    b = task.sample(12, generator=gen(3))
    assert b.inputs.shape[2] == 6 and b.targets.shape[2] == 5
    for r in range(12):
        L = int(b.sizes[r])
        x, y, m = b.inputs[:, r], b.targets[:, r], b.mask[:, r]
        R = round(float(x[L + 1, 5]) * 4)
        assert 1 <= R <= 4
        seq = x[1 : L + 1, :4]
        assert torch.equal(y[L + 2 : L + 2 + R * L, :4], seq.repeat(R, 1))
        end = L + 2 + R * L
        assert y[end, 4] == 1 and y[:, 4].sum() == 1 and y[end, :4].sum() == 0
        assert m.sum() == R * L + 1 and m[L + 2 : end + 1].all()


def test_associative_recall_layout():
    task = AssociativeRecallTask(num_bits=6, item_length=3, min_items=2, max_items=6)
    b = task.sample(20, generator=gen(4))
    assert b.inputs.shape[2] == 8 and b.targets.shape[2] == 6
    for r in range(20):
        n = int(b.sizes[r])
        x, y, m = b.inputs[:, r], b.targets[:, r], b.mask[:, r]
        items = [x[4 * i + 1 : 4 * i + 4, :6] for i in range(n)]
        assert all(x[4 * i, 6] == 1 for i in range(n))
        qs = 4 * n
        assert x[qs, 7] == 1 and x[qs + 4, 7] == 1
        query = x[qs + 1 : qs + 4, :6]
        q = [i for i in range(n - 1) if torch.equal(items[i], query)]
        assert q, "the query is one of the first n-1 items"
        assert torch.equal(y[qs + 5 : qs + 8], items[q[0] + 1])
        assert m.sum() == 3 and m[qs + 5 : qs + 8].all()
    with pytest.raises(ValueError, match="size"):
        task.sample(2, size=1)


def test_bad_options_raise_value_errors():
    with pytest.raises(ValueError, match="max_length"):
        CopyTask(min_length=5, max_length=2)
    with pytest.raises(ValueError, match="num_bits"):
        CopyTask(num_bits=0)
    with pytest.raises(ValueError, match="valid"):
        make_task("sort")


def test_bit_errors_and_loss_on_a_hand_made_case():
    # T=3, B=2, C=2; only steps 1 and 2 are scored for row 0, step 2 for row 1
    targets = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    mask = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    logits = torch.tensor([
        [[-5.0, -5.0], [5.0, 5.0]],  # unscored: all wrong, must not count
        [[5.0, 5.0], [-5.0, -5.0]],  # row 0: bit 1 wrong (1 error); row 1 unscored
        [[-5.0, 5.0], [5.0, -5.0]],  # row 0 right; row 1 both wrong (2 errors)
    ])
    assert bit_errors(logits, targets, mask).tolist() == [1.0, 2.0]
    mean, per_seq = masked_bce(logits, targets, mask)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    expected = (bce * mask.unsqueeze(-1)).sum() / 6
    torch.testing.assert_close(mean, expected)
    assert per_seq.shape == (2,)


def test_a_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    task = CopyTask(num_bits=4, max_length=3)
    model = SequenceModel(make_core("lstm", task.input_size, hidden_size=32), task.target_size)
    fixed = task.sample(64, generator=gen(9))
    with torch.no_grad():
        before = masked_bce(model(fixed.inputs), fixed.targets, fixed.mask)[0].item()
    out = train(model, task, TrainConfig(batch_size=32, max_sequences=32 * 60, lr=1e-2, log_every=10, seed=1))
    with torch.no_grad():
        after = masked_bce(model(fixed.inputs), fixed.targets, fixed.mask)[0].item()
    assert after < before - 0.05
    assert out["sequences"] == 32 * 60 and len(out["history"]) == 6
    res = evaluate(model, task, sizes=[2, 6], num_sequences=20, batch_size=8)
    assert set(res) == {2, 6} and all(0 <= v["mean"] for v in res.values())


def test_early_stop_and_curriculum():
    task = CopyTask(num_bits=2, max_length=6)
    model = SequenceModel(make_core("gru", task.input_size, hidden_size=8), task.target_size)
    cfg = TrainConfig(batch_size=4, max_sequences=4000, window=5, curriculum=True, curriculum_start=2,
                      curriculum_step=2, curriculum_threshold=1e9, early_stop_errors=1e9, log_every=1)
    out = train(model, task, cfg)
    # threshold 1e9: the size grows every 5 batches (2 -> 4 -> 6), then early stop after 5 more
    assert out["stopped"] == "early" and out["final_max_size"] == 6 and out["batches"] == 15
    assert [p["max_size"] for p in out["history"]][::5] == [2, 4, 6]


def test_record_weightings_finds_weight_fields():
    from typing import NamedTuple

    from memory_cores.base import Core

    class S(NamedTuple):
        h: torch.Tensor
        read_weights: torch.Tensor  # [B, H, N]
        write_weights: torch.Tensor  # [B, N]

    class Toy(Core):
        def __init__(self, input_size: int) -> None:
            super().__init__(input_size)
            self.lin = torch.nn.Linear(input_size, 3)
            self.output_size = 3

        def initial_state(self, batch_size, device=None):
            z = torch.zeros(batch_size, 4)
            return S(torch.zeros(batch_size, 3), torch.zeros(batch_size, 2, 4), z)

        def step(self, x, state):
            w = torch.softmax(self.lin(x)[:, :1].expand(-1, 4), -1)
            return self.lin(x), S(self.lin(x), w.unsqueeze(1).expand(-1, 2, -1), w)

    task = CopyTask(num_bits=1, max_length=2)
    model = SequenceModel(Toy(task.input_size), task.target_size)
    tr = record_weightings(model, task.sample(2, size=2, generator=gen()))
    assert set(tr["fields"]) == {"read_weights", "write_weights"}
    T = 6
    assert len(tr["fields"]["read_weights"]) == T and len(tr["fields"]["read_weights"][0]) == 2
    assert len(tr["fields"]["write_weights"][0]) == 1 and len(tr["fields"]["write_weights"][0][0]) == 4


def test_peak_initial_weightings_breaks_the_uniform_trap():
    from typing import NamedTuple

    from memory_cores.base import Core, LearnedInit

    class S(NamedTuple):
        read_weights: torch.Tensor  # [B, 1, N]

    class Uniform(Core):
        """Keeps the weighting it starts with: the trap is exact while the initial weighting is uniform."""

        def __init__(self, input_size: int) -> None:
            super().__init__(input_size)
            self.read_weights_init = LearnedInit(1, 5)
            self.output_size = 1

        def initial_state(self, batch_size, device=None):
            return S(torch.softmax(self.read_weights_init.expand(batch_size), -1))

        def step(self, x, state):
            return x[:, :1], state

    core = Uniform(3)
    assert slots_stay_identical(core, 3)
    assert peak_initial_weightings(core, mass=0.9) == ["read_weights_init.value"]
    w0 = core.initial_state(1).read_weights[0, 0]
    torch.testing.assert_close(w0[0], torch.tensor(0.9))
    assert not slots_stay_identical(core, 3)


def test_cli_runs_and_writes_json(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_supervised", os.path.join(ROOT, "scripts", "train_supervised.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "r.json"
    threads = torch.get_num_threads()
    try:
        cli.main(["--core", "lstm", "--core-arg", "hidden_size=16", "--task", "associative_recall", "--task-arg",
                  "max_items=3", "--max-sequences", "64", "--batch-size", "16", "--log-every", "2", "--eval-sizes",
                  "3", "4", "--eval-sequences", "8", "--out", str(out), "--quiet"])
    finally:
        torch.set_num_threads(threads)
    res = json.loads(out.read_text())
    assert res["threads"] == 1 and res["train"]["sequences"] == 64 and set(res["eval"]) == {"3", "4"}
    assert res["command"].startswith("python3 scripts/train_supervised.py --core lstm")


def test_discrete_choice_core_trains_with_reinforce_and_reports_choices():
    from agents.supervised import choice_usage

    torch.manual_seed(0)
    task = CopyTask(num_bits=3, max_length=3)
    core = make_core("rl_access", task.input_size, hidden_size=16, num_slots=6, slot_size=5)
    model = SequenceModel(core, task.target_size)
    before = [p.detach().clone() for p in core.parameters()]
    out = train(model, task, TrainConfig(batch_size=8, max_sequences=24, log_every=1, early_stop_errors=None))
    assert out["batches"] == 3 and all(torch.isfinite(torch.tensor(p["loss"])) for p in out["history"])
    assert any(not torch.equal(a, b) for a, b in zip(before, core.parameters()))
    usage = choice_usage(model, task.sample(4, size=3, generator=gen()))
    for phase in ("input", "output"):
        assert set(usage[phase]) == set(core.choice_names)
        assert abs(sum(usage[phase].values()) - 1.0) < 1e-3
