"""`SGD` with momentum, dampening, Nesterov and weight decay: torch.optim.SGD's exact update rule.

For each parameter p with gradient g (parameters whose `.grad` is None are skipped), per step:

    d = -g if maximize else g
    d = d + weight_decay * p                      (when weight_decay != 0)
    if momentum != 0:
        buf = d (a copy) on the first step, else buf = momentum * buf + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    p = p - lr * d

in the parameter's dtype. The state (`momentum_buffer` per parameter) and hyper-parameters round-trip
through `state_dict()` / `load_state_dict()` in torch's layout: {"state": {index: {...}},
"param_groups": [{..., "params": [indices]}]}.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping

import numpy as np

from .nn.module import Parameter, overflow_in_cast

__all__ = ["Optimizer", "SGD"]


class Optimizer:
    """Parameter groups, per-parameter state, zero_grad and the state dict (torch's layout)."""

    def __init__(self, params: Iterable[Parameter] | Iterable[dict], defaults: dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.state: dict[Parameter, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group {"params": [...], hyper-parameter: value, ...}; missing hyper-parameters take the
        optimizer's defaults. Raises ValueError when a parameter is already in a group and TypeError for
        anything that is not a Parameter.
        """
        if not isinstance(group, dict):
            raise TypeError(f"param group must be a dict, got {type(group).__name__}")
        params = group["params"]
        params = [params] if isinstance(params, Parameter) else list(params)
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer can only optimize Parameters, got {type(p).__name__}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        new = {k: v for k, v in group.items() if k != "params"}
        for k, v in self.defaults.items():
            new.setdefault(k, v)
        self._check_group(new)
        new["params"] = params
        self.param_groups.append(new)

    def _check_group(self, group: dict[str, Any]) -> None:
        """Validate a group's hyper-parameters (subclasses)."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the `.grad` of every parameter of every group: to None (default), or to zeros in
        place with `set_to_none=False`.
        """
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad[...] = 0

    # ----------------------------------------------------------------- state dict
    def state_dict(self) -> dict[str, Any]:
        """{"state": {i: {name: array copy}}, "param_groups": [{hyper-params, "params": [i, ...]}]}
        with parameters numbered in group order, as torch does."""
        index: dict[int, int] = {}
        groups = []
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            groups.append({**{k: copy.deepcopy(v) for k, v in g.items() if k != "params"}, "params": ids})
        state = {}
        for g in self.param_groups:
            for p in g["params"]:
                if p in self.state:
                    state[index[id(p)]] = {k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
                                           for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore hyper-parameters and state: all of it, or (on any error) none of it."""
        groups = state_dict.get("param_groups")
        if not isinstance(groups, list) or len(groups) != len(self.param_groups):
            raise ValueError(f"loaded state dict has {len(groups) if isinstance(groups, list) else 'no'} "
                             f"parameter groups; this optimizer has {len(self.param_groups)}")
        params_by_index: dict[int, Parameter] = {}
        for mine, theirs in zip(self.param_groups, groups):
            ids = list(theirs.get("params", []))
            if len(ids) != len(mine["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't match the "
                                 f"size of optimizer's group ({len(ids)} vs {len(mine['params'])} params)")
            for i, p in zip(ids, mine["params"]):
                params_by_index[int(i)] = p
        new_state: dict[Parameter, dict[str, Any]] = {}
        for i, st in dict(state_dict.get("state", {})).items():
            p = params_by_index.get(int(i))
            if p is None:
                raise ValueError(f"loaded optimizer state names parameter {i}, which no group holds")
            entry = {}
            for k, v in st.items():
                if isinstance(v, np.ndarray) or hasattr(v, "__array__"):
                    arr = np.asarray(v)
                    if arr.shape != p.shape:
                        raise ValueError(f"optimizer state {k!r} of parameter {i} has shape {arr.shape}, "
                                         f"the parameter has {p.shape}")
                    entry[k] = _state_array(arr, p.dtype, f"optimizer state {k!r} of parameter {i}")
                else:
                    entry[k] = v
            new_state[p] = entry
        new_groups = []
        for mine, theirs in zip(self.param_groups, groups):
            g = {k: copy.deepcopy(v) for k, v in theirs.items() if k != "params"}
            self._check_group({**self.defaults, **g})
            new_groups.append({**mine, **g, "params": mine["params"]})
        self.param_groups = new_groups
        self.state = new_state

    def __repr__(self) -> str:
        lines = [type(self).__name__ + " ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        return "\n".join(lines) + "\n)"


class SGD(Optimizer):
    """torch.optim.SGD(params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *,
    maximize=False). `foreach`, `differentiable` and `fused` are accepted for signature compatibility
    and must keep their defaults (they select torch kernels; the numpy update is one code path)."""

    def __init__(self, params: Iterable[Parameter] | Iterable[dict], lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None, differentiable: bool = False,
                 fused: bool | None = None) -> None:
        if foreach or differentiable or fused:
            raise ValueError("SGD: foreach, differentiable and fused select torch kernels; syncnorm has "
                             "one numpy update and accepts only their defaults")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov, maximize=maximize))

    def _check_group(self, g: dict[str, Any]) -> None:
        if isinstance(g["lr"], bool) or not isinstance(g["lr"], (int, float)) or g["lr"] < 0.0:
            raise ValueError(f"Invalid learning rate: {g['lr']}")
        if g["momentum"] < 0.0:
            raise ValueError(f"Invalid momentum value: {g['momentum']}")
        if g["weight_decay"] < 0.0:
            raise ValueError(f"Invalid weight_decay value: {g['weight_decay']}")
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening (got "
                             f"momentum={g['momentum']}, dampening={g['dampening']})")

    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for g in self.param_groups:
            lr, mom, damp = g["lr"], g["momentum"], g["dampening"]
            wd, nesterov, maximize = g["weight_decay"], g["nesterov"], g["maximize"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                dt = p.data.dtype.type
                d = -p.grad if maximize else p.grad
                if wd != 0:
                    d = d + dt(wd) * p.data
                if mom != 0:
                    st = self.state.setdefault(p, {})
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = st["momentum_buffer"] = np.array(d, dtype=p.dtype, copy=True)
                    else:
                        buf *= dt(mom)
                        buf += dt(1 - damp) * d if damp != 0 else d
                    d = d + dt(mom) * buf if nesterov else buf
                p.data -= dt(lr) * d


def _state_array(arr: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    """`arr` cast to the parameter's dtype, refusing what the cast would not keep."""
    if arr.dtype.kind not in "iuf":  # bool is kind "b", complex "c": refused
        raise ValueError(f"{what}: expected a real numeric array, got dtype {arr.dtype}")
    worst = overflow_in_cast(arr, dtype)
    if worst is not None:
        raise ValueError(f"{what}: finite values up to {worst:g} in magnitude would become inf in "
                         f"{np.dtype(dtype)}")
    return arr.astype(dtype, copy=True)
