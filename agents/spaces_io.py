"""Gymnasium spaces as plain data (dicts of strings, numbers and lists) and back.

A checkpoint stores its policy's observation and action spaces this way, so a policy can be rebuilt from the
checkpoint alone (``weights_only`` loading allows no pickled objects), whatever env, wrapper or factory made it.

Supported: ``Box``, ``Discrete``, ``MultiDiscrete``, ``MultiBinary``, ``Text`` (and MiniGrid's mission space, stored
as ``Text``), and ``Dict``/``Tuple`` of these, nested to any depth::

    >>> space_from_dict(space_to_dict(spaces.Tuple((spaces.Discrete(2), spaces.Box(0, 1, (3,))))))
    Tuple(Discrete(2), Box(0.0, 1.0, (3,), float32))

:func:`spaces_match` says whether an env's space fits a policy rebuilt from a stored one (``Text`` entries, which are
not encoded, match any text entry).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces


class SpaceSpecError(ValueError):
    """A space that cannot be stored, or a stored spec that is not valid."""


_SUPPORTED = "Box, Discrete, MultiDiscrete, MultiBinary, Text, and Dict/Tuple of these"


def _bound(a: np.ndarray) -> Any:
    """A Box bound as plain data: one number when every element is the same (the usual case; an image's 0..255),
    else the nested list (``inf`` stays a float ``inf``)."""
    a = np.asarray(a)
    if a.size and (a == a.flat[0]).all():
        return a.flat[0].item()
    return a.tolist()


def space_to_dict(space: spaces.Space, _path: str = "space") -> dict[str, Any]:
    """The space as plain data; :class:`SpaceSpecError` (one line, naming the path of the bad entry, e.g.
    ``space[0]['x']``) for a space type not listed in the module docstring."""
    if isinstance(space, spaces.Box):
        return {"type": "Box", "low": _bound(space.low), "high": _bound(space.high), "shape": list(space.shape),
                "dtype": np.dtype(space.dtype).name}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start), "dtype": np.dtype(space.dtype).name}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": np.asarray(space.start).tolist(),
                "dtype": np.dtype(space.dtype).name}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, spaces.Text):
        return {"type": "Text", "max_length": int(space.max_length), "min_length": int(space.min_length),
                "charset": "".join(sorted(space.character_set))}
    if type(space).__name__ == "MissionSpace":  # MiniGrid's mission: stored as a Text (never encoded)
        return {"type": "Text", "max_length": int(getattr(space, "max_length", 1) or 1)}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict",
                "spaces": [[k, space_to_dict(v, f"{_path}[{k!r}]")] for k, v in space.spaces.items()]}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_dict(v, f"{_path}[{i}]") for i, v in enumerate(space.spaces)]}
    raise SpaceSpecError(
        f"cannot store {_path} {' '.join(str(space).split())} ({type(space).__name__}); supported: {_SUPPORTED}"
    )


def space_from_dict(data: dict[str, Any]) -> spaces.Space:
    """Inverse of :func:`space_to_dict` (``space_from_dict(space_to_dict(s)) == s``, ``Dict`` order kept)."""
    try:
        kind = data["type"]
        if kind == "Box":
            dtype, shape = np.dtype(data["dtype"]), tuple(data["shape"])
            low, high = (np.asarray(data[k], dtype=dtype) for k in ("low", "high"))
            low, high = (np.full(shape, b, dtype) if b.ndim == 0 else b for b in (low, high))  # one number: all
            return spaces.Box(low, high, shape, dtype)
        if kind == "Discrete":
            return spaces.Discrete(int(data["n"]), start=int(data["start"]), dtype=np.dtype(data.get("dtype", "int64")))
        if kind == "MultiDiscrete":
            return spaces.MultiDiscrete(np.asarray(data["nvec"]), dtype=np.dtype(data["dtype"]),
                                        start=np.asarray(data["start"]))
        if kind == "MultiBinary":
            return spaces.MultiBinary(data["n"])
        if kind == "Text":
            kw = {"min_length": int(data["min_length"])} if "min_length" in data else {}
            if "charset" in data:
                kw["charset"] = str(data["charset"])
            return spaces.Text(int(data["max_length"]), **kw)
        if kind == "Dict":  # a list of pairs: gymnasium sorts the keys of a dict, not of a list, so the order is kept
            return spaces.Dict([(k, space_from_dict(v)) for k, v in data["spaces"]])
        if kind == "Tuple":
            return spaces.Tuple(tuple(space_from_dict(v) for v in data["spaces"]))
    except SpaceSpecError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise SpaceSpecError(f"stored space {str(data)[:80]} is not valid ({type(e).__name__}: {e})") from None
    raise SpaceSpecError(f"stored space type {kind!r} is not known; known: Box, Discrete, MultiDiscrete, "
                         "MultiBinary, Text, Dict, Tuple")


def spaces_match(a: spaces.Space, b: spaces.Space) -> bool:
    """Whether a policy made for space ``a`` fits space ``b``: the same plain data, except that ``Text`` entries
    (never encoded) match any text entry. A MiniGrid env's ``MissionSpace`` (whose ``str`` holds a function address)
    thus matches the ``Text`` it was stored as; use this, not ``str(a) == str(b)``, to check an env against a policy
    rebuilt from a checkpoint. Spaces that cannot be stored are compared with ``==``."""

    def view(data: Any) -> Any:
        if isinstance(data, dict):
            return {"type": "Text"} if data.get("type") == "Text" else {k: view(v) for k, v in data.items()}
        if isinstance(data, list):
            return [view(v) for v in data]
        return data

    try:
        return view(space_to_dict(a)) == view(space_to_dict(b))
    except SpaceSpecError:
        return a == b
