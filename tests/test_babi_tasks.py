"""The synthetic bAbI-style tasks (envs/babi_tasks.py): layout, answers checked by an independent reading of the
encoded stories, reproducibility, the harness runs on them."""

from __future__ import annotations

import pytest
import torch

from envs.babi_tasks import GOT, WENT, BabiSingleFact, BabiTask, BabiThreeFacts, BabiTwoFacts
from envs.sequence_data import TASKS, make_task

torch.set_num_threads(1)


def read_story(task: BabiTask, inputs: torch.Tensor, n: int) -> int:
    """The answer of one encoded row, from its input vectors alone (a second reading of the world's rules)."""
    A, L = task.num_actors, task.num_locations
    actor_at: dict[int, int] = {}
    held_by: dict[int, int] = {}
    places: dict[int, list[int]] = {}
    for t in range(n):
        v = inputs[t]
        a = int(v[:A].argmax())
        verb = int(v[task.verb0 : task.verb0 + 3].argmax())
        assert v.sum() == 3 and v[task.q0 :].sum() == 0
        if verb == WENT:
            actor_at[a] = int(v[task.loc0 : task.loc0 + L].argmax())
            for o, h in held_by.items():
                if h == a and places[o][-1] != actor_at[a]:
                    places[o].append(actor_at[a])
        else:
            o = int(v[task.obj0 : task.obj0 + task.num_objects].argmax())
            if verb == GOT:
                assert a in actor_at and o not in held_by
                held_by[o] = a
                places.setdefault(o, [])
                if not places[o] or places[o][-1] != actor_at[a]:
                    assert not places[o]  # only unseen objects, or objects where the actor is
                    places[o].append(actor_at[a])
            else:
                assert held_by.pop(o) == a
    q = inputs[n]
    if task.task == 1:
        assert q[task.q0] == 1 and q.sum() == 2
        return actor_at[int(q[:A].argmax())]
    o = int(q[task.obj0 : task.obj0 + task.num_objects].argmax())
    if task.task == 2:
        assert q[task.q0] == 1 and q.sum() == 2
        return places[o][-1]
    assert q[task.q0 + 1] == 1 and q.sum() == 3
    assert int(q[task.loc0 : task.loc0 + L].argmax()) == places[o][-1]  # "before <its current place>"
    return places[o][-2]


@pytest.mark.parametrize("cls", [BabiSingleFact, BabiTwoFacts, BabiThreeFacts])
def test_layout_and_answers(cls):
    task = cls()
    batch = task.sample(64, generator=torch.Generator().manual_seed(0))
    T, B, C = batch.inputs.shape
    assert C == task.input_size and batch.targets.shape == (T, B, task.num_locations)
    assert T == int(batch.sizes.max()) + 1
    assert ((batch.sizes >= task.min_size) & (batch.sizes <= task.max_size)).all()
    for b in range(B):
        n = int(batch.sizes[b])
        expected = torch.zeros(T)
        expected[n] = 1.0
        assert torch.equal(batch.mask[:, b], expected)  # scored at the question only
        assert batch.targets[n, b].sum() == 1 and batch.targets[:, b].sum() == 1
        assert batch.inputs[n + 1 :, b].abs().sum() == 0  # padding
        assert int(batch.targets[n, b].argmax()) == read_story(task, batch.inputs[:, b], n)


def test_reproducible_fixed_size_and_registered():
    for name in ("babi1", "babi2", "babi3"):
        task = make_task(name)
        assert TASKS[name] is type(task) and task.name == name
        a = task.sample(8, size=9, generator=torch.Generator().manual_seed(3))
        b = task.sample(8, size=9, generator=torch.Generator().manual_seed(3))
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert torch.equal(a.sizes, torch.full((8,), 9)) and a.inputs.shape[0] == 10
    assert make_task("babi1").input_size == 4 + 3 + 6 + 0 + 2
    assert make_task("babi3", num_objects=2).input_size == 4 + 3 + 6 + 2 + 2


def test_answers_are_balanced_over_locations():
    task = BabiTwoFacts()
    batch = task.sample(3000, generator=torch.Generator().manual_seed(1))
    counts = (batch.targets * batch.mask[..., None]).sum((0, 1))
    assert counts.min() > 0.8 * counts.mean()


def test_errors():
    with pytest.raises(ValueError, match="task"):
        BabiTask(task=4)
    with pytest.raises(ValueError, match="num_locations"):
        BabiTask(num_locations=1)
    with pytest.raises(ValueError, match="max_sentences"):
        BabiTask(min_sentences=5, max_sentences=3)
    with pytest.raises(ValueError, match="size"):
        BabiSingleFact().sample(2, size=0)


def test_harness_trains_on_babi():
    from agents.supervised import SequenceModel, TrainConfig, evaluate, train
    from memory_cores import make_core

    task = make_task("babi2")
    torch.manual_seed(0)
    model = SequenceModel(make_core("memnet", task.input_size, hidden_size=8, num_slots=16), task.target_size)
    result = train(model, task, TrainConfig(batch_size=8, max_sequences=32, log_every=1))
    assert result["sequences"] == 32 and len(result["history"]) == 4
    out = evaluate(model, task, sizes=[6], num_sequences=16)
    assert 0.0 <= out[6]["perfect_fraction"] <= 1.0
