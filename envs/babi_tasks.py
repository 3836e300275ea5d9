"""Synthetic bAbI-style question answering (Weston et al. 2015, tasks 1-3) as sequence tasks for the supervised
harness (:mod:`agents.supervised`): one story sentence per step, one question at the end, the answer a location.

The stories are generated procedurally by simulating a small world (``A`` actors, ``L`` locations, ``O`` objects),
so there is no vocabulary and no parsing: a sentence is a one-hot code of its parts. Task 1 tells only moves and
asks where an actor is; tasks 2 and 3 also let actors pick up and drop objects, and ask where an object is (2) or
where it was before its current place (3)::

    task 1, single supporting fact     "Mary went to the kitchen." ... "Where is Mary?"              -> kitchen
    task 2, two supporting facts       "John got the apple." ... "John went to the hall."
                                       "Where is the apple?"                                          -> hall
    task 3, three supporting facts     "John got the apple." "John went to the office." ...
                                       "John went to the hall." "Where was the apple before the hall?" -> office

The world: actors start nowhere; ``went`` moves an actor to a location other than its current one; ``got`` lets an
actor that is somewhere take a free object that is in the same place or has not been seen yet (it then is where the
actor is); ``dropped`` leaves a held object where its holder is; a held object moves with its holder. An object's
history is the list of places it has been in, consecutive duplicates merged. Task 1's question asks about an
actor that has moved; task 2's about an object that has been somewhere; task 3's about an object that has been in
two places at least, asking for the place before its current one (the most recent change, as bAbI's task 3
questions do). Stories without an eligible question are drawn again.

Layout of a row with ``n`` sentences (the row's size), time-major as :class:`envs.sequence_data.SequenceBatch`:
steps ``0..n-1`` the sentences, step ``n`` the question, scored there only (``mask``); target: the answer's
location one-hot (``L`` bits, BCE in the harness; a wrong answer costs 2 bit errors, no answer 1). With one
question per row, the harness's ``perfect_fraction`` is the answer accuracy and ``1 - perfect_fraction`` the bAbI
error rate. Input channels (``input_size = A + 3 + L + O + 2``)::

    [actor (A) | verb: went, got, dropped (3) | location (L) | object (O) | question: where-is, where-was-before (2)]

A sentence sets one actor, one verb and a location (went) or an object (got, dropped); a question sets its flag and
the actor (task 1), the object (task 2), or the object and the location it asks about (task 3). Tasks 2 and 3 use
all channels; task 1 has ``O = 0`` object channels.

Pure torch and Python (no gymnasium, no ``memory_cores``); a ``torch.Generator`` makes batches reproducible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .sequence_data import SequenceBatch

# envs/sequence_data.py registers these tasks in its TASKS and imports this module at its end, so this module
# imports sequence_data's helpers where they are used (either module may be imported first).

__all__ = ["BabiTask", "BabiSingleFact", "BabiTwoFacts", "BabiThreeFacts", "simulate_story"]

WENT, GOT, DROPPED = 0, 1, 2
VERBS = ("went", "got", "dropped")


def simulate_story(
    task: int, n: int, num_actors: int, num_locations: int, num_objects: int, rand
) -> tuple[list[tuple[int, int, int]], tuple[int, int, int], int] | None:
    """One story of ``n`` sentences and its question, or ``None`` when no question is possible.

    ``rand()`` returns a float in [0, 1). Returns ``(sentences, question, answer)``: sentences as
    ``(actor, verb, arg)`` (``arg`` a location for ``went``, an object otherwise); the question as
    ``(actor, object, location)`` with ``-1`` for unused parts; the answer a location index.
    """

    def pick(k: int) -> int:
        return min(int(rand() * k), k - 1)

    where_actor = [-1] * num_actors  # current location (-1: nowhere yet)
    holder = [-1] * num_objects  # actor holding the object (-1: none)
    history: list[list[int]] = [[] for _ in range(num_objects)]  # places the object has been in
    sentences = []

    def place(o: int, loc: int) -> None:
        if not history[o] or history[o][-1] != loc:
            history[o].append(loc)

    for _ in range(n):
        gettable = [(a, o) for a in range(num_actors) if where_actor[a] >= 0 for o in range(num_objects)
                    if holder[o] < 0 and (not history[o] or history[o][-1] == where_actor[a])]
        held = [o for o in range(num_objects) if holder[o] >= 0]
        r = rand() if task > 1 else 0.0
        if task > 1 and r < 0.25 and gettable:
            a, o = gettable[pick(len(gettable))]
            holder[o] = a
            place(o, where_actor[a])
            sentences.append((a, GOT, o))
        elif task > 1 and r < 0.35 and held:
            o = held[pick(len(held))]
            sentences.append((holder[o], DROPPED, o))
            holder[o] = -1
        else:
            a = pick(num_actors)
            if where_actor[a] < 0:
                loc = pick(num_locations)
            else:  # a place other than the current one
                loc = pick(num_locations - 1)
                loc += int(loc >= where_actor[a])
            where_actor[a] = loc
            for o in range(num_objects):
                if holder[o] == a:
                    place(o, loc)
            sentences.append((a, WENT, loc))
    if task == 1:
        candidates = [a for a in range(num_actors) if where_actor[a] >= 0]
        if not candidates:
            return None
        a = candidates[pick(len(candidates))]
        return sentences, (a, -1, -1), where_actor[a]
    need = 1 if task == 2 else 2
    candidates = [o for o in range(num_objects) if len(history[o]) >= need]
    if not candidates:
        return None
    o = candidates[pick(len(candidates))]
    if task == 2:
        return sentences, (-1, o, -1), history[o][-1]
    return sentences, (-1, o, history[o][-1]), history[o][-2]


class BabiTask:
    """bAbI-style task ``task`` (1, 2 or 3 supporting facts); see the module docstring.

    Args:
        task: 1 (single supporting fact), 2 (two) or 3 (three).
        num_actors: A, people in the stories (bAbI: 4).
        num_locations: L, places (bAbI: 6); the answer is one of them.
        num_objects: O, objects that can be carried (tasks 2 and 3; bAbI: 4). Ignored (0) for task 1.
        min_sentences, max_sentences: story length range (the row's size).
    """

    name = "babi"

    def __init__(
        self,
        task: int = 1,
        num_actors: int = 4,
        num_locations: int = 6,
        num_objects: int = 4,
        min_sentences: int = 2,
        max_sentences: int = 10,
    ) -> None:
        if task not in (1, 2, 3):
            raise ValueError(f"task must be 1, 2 or 3 (supporting facts), got {task!r}")
        for label, value, floor in (("num_actors", num_actors, 1), ("num_locations", num_locations, 2),
                                    ("num_objects", num_objects, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < floor:
                raise ValueError(f"{label} must be an int >= {floor}, got {value!r}")
        from .sequence_data import _check_range

        _check_range("min_sentences", min_sentences, "max_sentences", max_sentences, 1)
        self.task = task
        self.name = f"babi{task}"
        self.num_actors, self.num_locations = num_actors, num_locations
        self.num_objects = num_objects if task > 1 else 0
        self.min_sentences, self.max_sentences = min_sentences, max_sentences
        A, L, O = num_actors, num_locations, self.num_objects
        self.input_size = A + 3 + L + O + 2
        self.target_size = L
        self.min_size, self.max_size = min_sentences, max_sentences  # the size of a row is its number of sentences
        # channel offsets
        self.verb0, self.loc0, self.obj0 = A, A + 3, A + 3 + L
        self.q0 = A + 3 + L + O

    def encode_sentence(self, sentence: tuple[int, int, int]) -> Tensor:
        """One sentence ``(actor, verb, arg)`` as its input vector ``[input_size]``."""
        a, verb, arg = sentence
        v = torch.zeros(self.input_size)
        v[a] = 1.0
        v[self.verb0 + verb] = 1.0
        v[(self.loc0 if verb == WENT else self.obj0) + arg] = 1.0
        return v

    def encode_question(self, question: tuple[int, int, int]) -> Tensor:
        """A question ``(actor, object, location)`` (``-1``: unused) as its input vector ``[input_size]``."""
        a, o, loc = question
        v = torch.zeros(self.input_size)
        v[self.q0 + (1 if self.task == 3 else 0)] = 1.0
        if a >= 0:
            v[a] = 1.0
        if o >= 0:
            v[self.obj0 + o] = 1.0
        if loc >= 0:
            v[self.loc0 + loc] = 1.0
        return v

    def sample(
        self,
        batch_size: int,
        size: int | None = None,
        max_size: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> SequenceBatch:
        """A batch. ``size`` fixes every row's number of sentences; ``max_size`` lowers its upper bound."""
        from .sequence_data import SequenceBatch, _sizes, _to

        hi = self.max_sentences if max_size is None else max_size
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ValueError(f"size (number of sentences) must be an int >= 1, got {size!r}")
        n = _sizes(batch_size, self.min_sentences, hi, size, generator)  # [B]
        T = int(n.max()) + 1
        inputs = torch.zeros(T, batch_size, self.input_size)
        targets = torch.zeros(T, batch_size, self.target_size)
        mask = torch.zeros(T, batch_size)
        pool = torch.rand(4096, generator=generator).tolist()
        i = 0

        def rand() -> float:
            nonlocal pool, i
            if i == len(pool):
                pool, i = torch.rand(4096, generator=generator).tolist(), 0
            i += 1
            return pool[i - 1]

        for b in range(batch_size):
            nb = int(n[b])
            for _ in range(1000):
                story = simulate_story(self.task, nb, self.num_actors, self.num_locations, self.num_objects, rand)
                if story is not None:
                    break
            else:
                raise ValueError(f"no answerable {self.name} story of {nb} sentences in 1000 draws: use longer "
                                 f"stories (min_sentences) or fewer objects")
            sentences, question, answer = story
            for t, s in enumerate(sentences):
                inputs[t, b] = self.encode_sentence(s)
            inputs[nb, b] = self.encode_question(question)
            targets[nb, b, answer] = 1.0
            mask[nb, b] = 1.0
        return _to(SequenceBatch(inputs, targets, mask, n), device)


class BabiSingleFact(BabiTask):
    """bAbI task 1 (single supporting fact): moves only, "where is <actor>?"; stories of 2..10 sentences."""

    def __init__(self, num_actors: int = 4, num_locations: int = 6, min_sentences: int = 2,
                 max_sentences: int = 10) -> None:
        super().__init__(1, num_actors, num_locations, 1, min_sentences, max_sentences)


class BabiTwoFacts(BabiTask):
    """bAbI task 2 (two supporting facts): "where is <object>?"; stories of 4..16 sentences."""

    def __init__(self, num_actors: int = 4, num_locations: int = 6, num_objects: int = 4, min_sentences: int = 4,
                 max_sentences: int = 16) -> None:
        super().__init__(2, num_actors, num_locations, num_objects, min_sentences, max_sentences)


class BabiThreeFacts(BabiTask):
    """bAbI task 3 (three supporting facts): "where was <object> before <location>?"; stories of 6..24
    sentences."""

    def __init__(self, num_actors: int = 4, num_locations: int = 6, num_objects: int = 4, min_sentences: int = 6,
                 max_sentences: int = 24) -> None:
        super().__init__(3, num_actors, num_locations, num_objects, min_sentences, max_sentences)
