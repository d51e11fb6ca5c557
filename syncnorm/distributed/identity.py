"""Which layer a synchronized call belongs to, told the same way on every rank of the group.

A layer's identity is the order in which the group's layers are first used in training on this
rank: the first layer that trains in a group is #0, the next new one #1, and so on. Ranks that run
the same layers in the same order give each layer the same number, whatever else they built: an
evaluation copy, an EMA copy or a probe made on one rank only takes no number until it trains in
that group, so it costs nothing.

A creation counter alone (the earlier identity) broke on exactly those programs: one extra layer
built before the model shifted every later number on that rank. It still serves as a check: the
identity also carries how many of the group's numbered layers were created before this one, so
that two ranks that first use layers created in different orders (another order in the first step)
disagree at once instead of one call later. A call that is skipped, reordered or extra after the
first use of its layer is caught by the fingerprint (identity, call counter, phase) as before.

After RanksOutOfStepError (raised on every rank of the group within the same call) the ranks'
numberings may differ, so the group starts a new numbering (`restart`): layers built again on every
rank then agree again.
"""
from __future__ import annotations

import bisect
import itertools
import weakref
from dataclasses import dataclass
from typing import Any

__all__ = ["LayerIdentity", "creation_order", "first_use", "restart"]

_created = itertools.count()
# group key id -> (a weak reference to the key, whose death drops the entry so that a reused id
# starts afresh; sorted creation orders of the layers numbered in that group so far; [how many
# were numbered, numbering epoch]). Weak: holding a destroyed torch group would keep gloo's
# threads alive until exit.
_REGISTRY: dict[int, tuple[Any, list[int], list[int]]] = {}


def _entry(group_key: Any) -> tuple[Any, list[int], list[int]]:
    k = id(group_key)
    if k not in _REGISTRY:
        try:
            ref: Any = weakref.ref(group_key, lambda _, k=k: _REGISTRY.pop(k, None))
        except TypeError:  # None (a world of 1) and objects without weak references: kept
            ref = group_key
        _REGISTRY[k] = (ref, [], [0, 0])
    return _REGISTRY[k]


def creation_order() -> int:
    """A per-process creation counter (only compared within one rank: see the module doc)."""
    return next(_created)


@dataclass(frozen=True)
class LayerIdentity:
    """use: the layer's number in its group (order of first training use); earlier: how many of
    the group's layers numbered before it were created before it on this rank; epoch: how many
    times the group's numbering restarted."""

    use: int
    earlier: int
    epoch: int = 0

    def __str__(self) -> str:
        return str(self.use) if not self.epoch else f"{self.use}.{self.epoch}"


def first_use(group_key: Any, created: int) -> LayerIdentity:
    """Number a layer (creation order `created`) at its first training use in the group whose
    collectives `group_key` identifies (a communicator or a torch group)."""
    _, orders, count = _entry(group_key)
    earlier = bisect.bisect_left(orders, created)
    bisect.insort(orders, created)
    ident = LayerIdentity(count[0], earlier, count[1])
    count[0] += 1
    return ident


def restart(group_key: Any) -> None:
    """Start the group's numbering again (every rank does, after RanksOutOfStepError)."""
    _, orders, count = _entry(group_key)
    orders.clear()
    count[0], count[1] = 0, count[1] + 1
