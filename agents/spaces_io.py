"""Gymnasium spaces as plain data (dicts of strings, numbers and lists) and back.

A checkpoint stores its policy's observation and action spaces this way, so a policy can be rebuilt from the
checkpoint alone (``weights_only`` loading allows no pickled objects), whatever env, wrapper or factory made it.

Supported: ``Box``, ``Discrete``, ``MultiDiscrete``, ``MultiBinary``, ``Text`` (and MiniGrid's mission space, stored
as ``Text``), and ``Dict``/``Tuple`` of these, nested to any depth::

    >>> space_from_dict(space_to_dict(spaces.Tuple((spaces.Discrete(2), spaces.Box(0, 1, (3,))))))
    Tuple(Discrete(2), Box(0.0, 1.0, (3,), float32))
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces


class SpaceSpecError(ValueError):
    """A space that cannot be stored, or a stored spec that is not valid."""


def space_to_dict(space: spaces.Space) -> dict[str, Any]:
    """The space as plain data; :class:`SpaceSpecError` for a space type not listed in the module docstring."""
    if isinstance(space, spaces.Box):
        return {"type": "Box", "low": space.low.tolist(), "high": space.high.tolist(), "shape": list(space.shape),
                "dtype": np.dtype(space.dtype).name}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": np.asarray(space.start).tolist(),
                "dtype": np.dtype(space.dtype).name}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, spaces.Text) or type(space).__name__ == "MissionSpace":
        return {"type": "Text", "max_length": int(getattr(space, "max_length", 1) or 1)}
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": [[k, space_to_dict(v)] for k, v in space.spaces.items()]}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_dict(v) for v in space.spaces]}
    raise SpaceSpecError(f"cannot store space {space} ({type(space).__name__})")


def space_from_dict(data: dict[str, Any]) -> spaces.Space:
    """Inverse of :func:`space_to_dict`."""
    try:
        kind = data["type"]
        if kind == "Box":
            dtype = np.dtype(data["dtype"])
            return spaces.Box(np.asarray(data["low"], dtype=dtype), np.asarray(data["high"], dtype=dtype),
                              tuple(data["shape"]), dtype)
        if kind == "Discrete":
            return spaces.Discrete(int(data["n"]), start=int(data["start"]))
        if kind == "MultiDiscrete":
            return spaces.MultiDiscrete(np.asarray(data["nvec"]), dtype=np.dtype(data["dtype"]),
                                        start=np.asarray(data["start"]))
        if kind == "MultiBinary":
            return spaces.MultiBinary(data["n"])
        if kind == "Text":
            return spaces.Text(int(data["max_length"]))
        if kind == "Dict":
            return spaces.Dict({k: space_from_dict(v) for k, v in data["spaces"]})
        if kind == "Tuple":
            return spaces.Tuple(tuple(space_from_dict(v) for v in data["spaces"]))
    except (KeyError, TypeError, ValueError) as e:
        raise SpaceSpecError(f"stored space {str(data)[:80]} is not valid ({type(e).__name__}: {e})") from None
    raise SpaceSpecError(f"stored space type {kind!r} is not known")
