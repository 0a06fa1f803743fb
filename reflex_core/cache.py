"""Values computed once per live object, kept outside it (models stay plain modules)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

_VALUES: dict[tuple[int, str], Any] = {}


def once_per_object(obj: Any, name: str, build: Callable[[], Any]) -> Any:
    """build() the first time (obj, name) is asked for; the same value after, while obj lives.

    Used for work done in place on a model that must happen once however many
    runners wrap it (fusing projections), without stashing it on the model.
    """
    key = (id(obj), name)
    if key not in _VALUES:
        _VALUES[key] = build()
        weakref.finalize(obj, _VALUES.pop, key, None)
    return _VALUES[key]
