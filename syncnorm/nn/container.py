"""Containers: `Sequential`, `ModuleList`, and `Identity`."""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Iterator, overload

import numpy as np

from .module import Module

__all__ = ["Sequential", "ModuleList", "Identity"]


class Sequential(Module):
    """Runs its children in order; `backward` runs their backwards in reverse order."""

    def __init__(self, *args: Module | OrderedDict[str, Module]) -> None:
        super().__init__()
        if len(args) == 1 and isinstance(args[0], OrderedDict):
            for name, m in args[0].items():
                self.add_module(name, m)
        else:
            for i, m in enumerate(args):
                self.add_module(str(i), m)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    @overload
    def __getitem__(self, idx: int) -> Module: ...
    @overload
    def __getitem__(self, idx: slice) -> Sequential: ...

    def __getitem__(self, idx: int | slice) -> Module | Sequential:
        items = list(self._modules.items())
        if isinstance(idx, slice):
            return Sequential(OrderedDict(items[idx]))
        return items[_index(idx, len(items))][1]

    def __setitem__(self, idx: int, module: Module) -> None:
        key = list(self._modules)[_index(idx, len(self._modules))]
        setattr(self, key, module)

    def append(self, module: Module) -> Sequential:
        """Add `module` at the end (named by its position); returns self."""
        self.add_module(str(len(self)), module)
        return self

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Run the children in order, each on the previous one's output."""
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """Run the children's backwards in reverse order; returns the gradient with respect to the
        first child's input.
        """
        for m in reversed(list(self._modules.values())):
            grad_output = m.backward(grad_output)
        return grad_output


class ModuleList(Module):
    """A list of modules, registered so that their parameters and state are tracked."""

    def __init__(self, modules: Iterable[Module] | None = None) -> None:
        super().__init__()
        for m in modules or ():
            self.append(m)

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def __getitem__(self, idx: int) -> Module:
        return list(self._modules.values())[_index(idx, len(self))]

    def __setitem__(self, idx: int, module: Module) -> None:
        setattr(self, str(_index(idx, len(self))), module)

    def append(self, module: Module) -> ModuleList:
        """Add `module` at the end (named by its position); returns self."""
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        """Append every module of `modules`; returns self."""
        for m in modules:
            self.append(m)
        return self


class Identity(Module):
    """Returns its input unchanged (and its gradient unchanged)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__()

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Return `x` itself."""
        return x

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """Return `grad_output` itself."""
        return grad_output


def _index(idx: int, n: int) -> int:
    if not -n <= idx < n:
        raise IndexError(f"index {idx} is out of range for a container of {n} modules")
    return idx % n
