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


# ---------------------------------------------------------------------- choice modes of discrete-choice cores
ORACLE_PROCS = ("read_move_right", "no_op", "write_move_right", "write_least_used")  # index order on purpose


def _copy_rows(lengths, num_bits=4, seed=0):
    """A Copy batch with one row per length in ``lengths`` (taken from a larger random batch)."""
    task = CopyTask(num_bits=num_bits, max_length=max(lengths))
    big = task.sample(64, generator=gen(seed))
    rows = [int((big.sizes == L).nonzero()[0]) for L in lengths]
    T = 2 * max(lengths) + 2
    from envs.sequence_data import SequenceBatch

    return task, SequenceBatch(big.inputs[:T, rows], big.targets[:T, rows], big.mask[:T, rows], big.sizes[rows])


def test_copy_oracle_sequence_on_a_hand_checked_timeline():
    """Rows of length 3 and 1: the oracle's processes by hand, then the slots the core writes and reads under them:
    items 0, 1, 2 go to slots 0, 1, 2 and answer step j reads slot j (the answer's targets are the items)."""
    from agents.supervised import copy_oracle_choices

    task, batch = _copy_rows([3, 1])
    choices = copy_oracle_choices(batch, ORACLE_PROCS)
    assert choices.shape == (8, 2) and choices.dtype == torch.long
    names = [[ORACLE_PROCS[int(c)] for c in choices[:, r]] for r in range(2)]
    wlu, rmr = "write_least_used", "read_move_right"
    assert names[0] == ["no_op", wlu, wlu, wlu, "no_op", rmr, rmr, rmr]
    assert names[1] == ["no_op", wlu, "no_op", rmr, "no_op", "no_op", "no_op", "no_op"]

    torch.manual_seed(0)
    core = make_core("rl_access", task.input_size, hidden_size=8, num_slots=5, slot_size=6, processes=ORACLE_PROCS)
    state = core.initial_state(2)
    written, read_slots = [[], []], [[], []]
    with torch.no_grad():
        for t in range(8):
            before = state.memory
            y, state, _ = core.step_with_choice(batch.inputs[t], state, choice=choices[t])
            for r in range(2):
                changed = (state.memory[r] != before[r]).any(-1).nonzero().flatten().tolist()
                if changed:
                    written[r].append((t, changed))
                if batch.mask[t, r] > 0:  # an answer step: which slot of the final memory was read?
                    read_slots[r].append(y[r, 8:])
    assert written == [[(1, [0]), (2, [1]), (3, [2])], [(1, [0])]]
    for r, L in enumerate((3, 1)):
        assert len(read_slots[r]) == L
        for j, value in enumerate(read_slots[r]):
            matches = [i for i in range(5) if torch.equal(value, state.memory[r, i])]
            assert matches == [j]


def test_choice_modes_errors():
    from agents.supervised import copy_oracle_choices, stored_choices

    task, batch = _copy_rows([2])
    with pytest.raises(ValueError, match="read_move_right"):
        copy_oracle_choices(batch, ("no_op", "write_least_used", "move_right"))
    core = make_core("rl_access", task.input_size, hidden_size=8, num_slots=4, slot_size=4, processes=ORACLE_PROCS)
    with pytest.raises(ValueError, match="copy task only"):
        stored_choices(SequenceModel(core, 4), AssociativeRecallTask(), batch, "oracle")
    with pytest.raises(ValueError, match="choices"):
        stored_choices(SequenceModel(core, 4), task, batch, "greedy")
    lstm = SequenceModel(make_core("lstm", task.input_size, hidden_size=8), task.target_size)
    with pytest.raises(ValueError, match="discrete access choices"):
        train(lstm, task, TrainConfig(batch_size=4, max_sequences=4, choices="random"))


def test_random_choices_are_uniform_and_ignore_the_policy():
    from agents.supervised import stored_choices

    task = CopyTask(num_bits=3, max_length=3)
    core = make_core("rl_access", task.input_size, hidden_size=8, num_slots=4, slot_size=4, processes=ORACLE_PROCS)
    P = core.num_choices
    with torch.no_grad():
        core.interface.bias[0] = 50.0  # pi(process 0) ~ 1
    model = SequenceModel(core, task.target_size)
    big = task.sample(4000, generator=gen(1))
    choices = stored_choices(model, task, big, "random", gen(2))
    counts = torch.bincount(choices.flatten(), minlength=P).float()
    n = counts.sum()
    assert ((counts / n) - 1 / P).abs().max() < 5 * ((1 / P) * (1 - 1 / P) / n).sqrt()  # 32k draws, 5 sd


@pytest.mark.parametrize("mode", ["random", "oracle"])
def test_stored_choice_modes_get_no_choice_gradient(mode):
    """choices='random' / 'oracle': no choice loss; the RL rows z_t of the interface get exactly zero gradient and
    stay unchanged, the rest of the network trains."""
    torch.manual_seed(0)
    task = CopyTask(num_bits=3, max_length=3)
    core = make_core("rl_access", task.input_size, hidden_size=8, num_slots=4, slot_size=4, processes=ORACLE_PROCS)
    P = core.num_choices
    model = SequenceModel(core, task.target_size)
    z_weight, z_bias = core.interface.weight[:P].detach().clone(), core.interface.bias[:P].detach().clone()
    rest = core.interface.weight[P:].detach().clone()
    train(model, task, TrainConfig(batch_size=8, max_sequences=16, log_every=1, early_stop_errors=None,
                                   choices=mode))
    assert torch.count_nonzero(core.interface.weight.grad[:P]) == 0
    assert torch.count_nonzero(core.interface.bias.grad[:P]) == 0
    assert core.interface.weight.grad[P:].abs().sum() > 0
    assert torch.equal(core.interface.weight[:P], z_weight) and torch.equal(core.interface.bias[:P], z_bias)
    assert not torch.equal(core.interface.weight[P:], rest)


def test_cli_oracle_choices_and_core_kwargs_json(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_supervised", os.path.join(ROOT, "scripts", "train_supervised.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "o.json"
    threads = torch.get_num_threads()
    kwargs = json.dumps({"processes": list(ORACLE_PROCS), "hidden_size": 8, "num_slots": 6, "slot_size": 4})
    try:
        res = cli.main(["--core", "rl_access", "--core-kwargs", kwargs, "--core-arg", "slot_size=5", "--task", "copy",
                        "--task-arg", "max_length=3", "--task-arg", "num_bits=3", "--choices", "oracle",
                        "--max-sequences", "32", "--batch-size", "8", "--eval-sizes", "2", "5",
                        "--eval-sequences", "8", "--out", str(out), "--quiet"])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads(out.read_text())
    assert saved["choices"] == "oracle" and saved["core_kwargs"]["processes"] == list(ORACLE_PROCS)
    assert saved["core_kwargs"]["slot_size"] == 5  # --core-arg overrides --core-kwargs
    assert set(saved["eval"]) == {"2", "5"} and "choice_usage" not in saved and res["train"]["sequences"] == 32


def test_oracle_agreement_of_a_policy_that_always_writes():
    """Greedy choices fixed to write_least_used: the oracle's process on the L item steps of the L + 2 input-phase
    steps, never on the answer steps."""
    from agents.supervised import oracle_agreement

    task = CopyTask(num_bits=3, max_length=5)
    core = make_core("rl_access", task.input_size, hidden_size=8, num_slots=6, slot_size=4, processes=ORACLE_PROCS)
    with torch.no_grad():
        core.interface.bias[ORACLE_PROCS.index("write_least_used")] = 1e3
    a = oracle_agreement(SequenceModel(core, task.target_size), task, task.sample(4, size=3, generator=gen()))
    assert a == {"input": 0.6, "output": 0.0, "whole_sequence": 0.0}


@pytest.mark.parametrize("slots,segment,storage", [(2, 1, "hidden"), (3, 4, "hidden"), (12, 1, "mixed")])
def test_memory_efficient_bptt_trains_the_same_parameters(slots, segment, storage):
    """--bptt-memory-slots changes the memory of the backward pass, not the training: the same seed gives the same
    parameters as plain BPTT after a few optimiser steps."""
    task = CopyTask(num_bits=3, max_length=5)
    params = []
    for cfg_slots in (0, slots):
        torch.manual_seed(0)
        model = SequenceModel(make_core("ntm", task.input_size, hidden_size=16, num_slots=8, slot_size=6),
                              task.target_size)
        train(model, task, TrainConfig(batch_size=4, max_sequences=4 * 5, lr=1e-2, seed=1, early_stop_errors=None,
                                       bptt_memory_slots=cfg_slots, bptt_segment_steps=segment,
                                       bptt_storage=storage))
        params.append([p.detach().clone() for p in model.parameters()])
    moved = SequenceModel(make_core("ntm", task.input_size, hidden_size=16, num_slots=8, slot_size=6),
                          task.target_size)  # (a fresh model differs: the test can fail)
    assert any(not torch.allclose(a, b) for a, b in zip(params[0], moved.parameters()))
    for a, b in zip(*params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="bptt_memory_slots"):
        train(SequenceModel(make_core("rl_access", task.input_size), task.target_size), task,
              TrainConfig(batch_size=2, max_sequences=2, bptt_memory_slots=2))
