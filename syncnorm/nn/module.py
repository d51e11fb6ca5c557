"""The module tree: `Parameter` and `Module`, modelled on torch.nn.

A module owns parameters (learned arrays with a `.grad`), buffers (state that is not learned,
such as running statistics) and child modules. `__call__` runs `forward`; `backward(grad_output)`
returns the gradient with respect to the input of the last forward and accumulates the parameters'
gradients (adds into `.grad`, or sets it when it is None), the way `loss.backward()` fills `.grad`
in torch.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import numpy as np

__all__ = ["Parameter", "Module", "IncompatibleKeys", "StateDictError"]


class StateDictError(RuntimeError):
    """`load_state_dict` refused a state dict; nothing of the module was changed."""


class IncompatibleKeys(NamedTuple):
    """What `load_state_dict` returns: the keys the module expected but the state dict lacked, and
    the keys of the state dict the module has no place for (both empty after a strict load).
    """
    missing_keys: list[str]
    unexpected_keys: list[str]


class Parameter:
    """A learned array. `.data` is a numpy array; `.grad` is None until a backward fills it."""

    __slots__ = ("data", "grad", "requires_grad", "__weakref__")

    def __init__(self, data: np.ndarray, requires_grad: bool = True) -> None:
        self.data = np.asarray(data)
        self.grad: np.ndarray | None = None
        self.requires_grad = requires_grad

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of `.data`."""
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        """The dtype of `.data`."""
        return self.data.dtype

    def accumulate_grad(self, g: np.ndarray) -> None:
        """Add `g` into `.grad` (set it when None), as torch's autograd does."""
        if not self.requires_grad:
            return
        g = np.asarray(g, dtype=self.data.dtype).reshape(self.data.shape)
        if self.grad is None:
            self.grad = g.copy()
        else:
            self.grad += g

    def __repr__(self) -> str:
        return f"Parameter containing:\n{self.data!r}"


class Module:
    """Base class of every layer, like `torch.nn.Module`.

    Subclasses implement `forward(x)` and `backward(grad_output) -> grad_input`. Attributes that are
    a `Parameter`, a `Module`, or registered with `register_buffer` are tracked and appear in
    `state_dict()` under torch's dotted key names.
    """

    _version: int = 1

    def __init__(self) -> None:
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers", set())
        object.__setattr__(self, "_modules", OrderedDict())

    # ----------------------------------------------------------------- attribute routing
    def __setattr__(self, name: str, value: Any) -> None:
        params = self.__dict__.get("_parameters")
        if params is None:
            raise AttributeError("cannot assign attributes before Module.__init__() call")
        if isinstance(value, Parameter):
            self._remove_from(name, self._buffers, self._modules, self.__dict__)
            params[name] = value
        elif isinstance(value, Module):
            self._remove_from(name, params, self._buffers, self.__dict__)
            self._modules[name] = value
        elif name in params:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} as parameter '{name}' "
                    "(a Parameter or None is expected)")
            params[name] = None
        elif name in self._modules:
            if value is not None:
                raise TypeError(
                    f"cannot assign {type(value).__name__} as child module '{name}' "
                    "(a Module or None is expected)")
            self._modules[name] = None
        elif name in self._buffers:
            self._buffers[name] = None if value is None else np.asarray(value)
        else:
            object.__setattr__(self, name, value)

    @staticmethod
    def _remove_from(name: str, *dicts: dict) -> None:
        for d in dicts:
            d.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        for store in ("_parameters", "_buffers", "_modules"):
            if store in d and name in d[store]:
                return d[store][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for store in (self._parameters, self._buffers, self._modules):
            if name in store:
                del store[name]
                self._non_persistent_buffers.discard(name)
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register `param` (a Parameter, or None for an absent one such as `bias=False`) as
        `name`; it appears in `parameters()` and `state_dict()`. Raises TypeError for anything else.
        """
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign {type(param).__name__} as parameter '{name}'")
        self._remove_from(name, self._buffers, self._modules, self.__dict__)
        self._parameters[name] = param

    def register_buffer(self, name: str, value: np.ndarray | None, persistent: bool = True) -> None:
        """Register `value` (an array, or None) as buffer `name`: state that is not learned, such as
        running statistics. Persistent buffers appear in `state_dict()`; `persistent=False` ones do not.
        """
        self._remove_from(name, self._parameters, self._modules, self.__dict__)
        self._buffers[name] = None if value is None else np.asarray(value)
        if persistent:
            self._non_persistent_buffers.discard(name)
        else:
            self._non_persistent_buffers.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        """Register `module` (a Module, or None) as child `name`; same as `setattr(self, name, module)`.
        Raises TypeError for an object that is not a Module.
        """
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        setattr(self, name, module) if module is not None else self._modules.__setitem__(name, None)

    # ----------------------------------------------------------------- running
    def forward(self, *args: Any) -> Any:
        """Compute the output for this module's input; every layer overrides it. `module(x)` calls it.
        In training mode a layer keeps what its `backward` needs.
        """
        raise NotImplementedError(f"{type(self).__name__} has no forward()")

    def backward(self, grad_output: np.ndarray) -> np.ndarray:
        """Return the gradient with respect to the input of the last `forward`, given `grad_output`
        (shaped like that forward's output), and add the parameters' gradients into their `.grad`.
        Every layer overrides it; calling it without a forward before (or twice for one forward) raises
        RuntimeError.
        """
        raise NotImplementedError(f"{type(self).__name__} has no backward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def train(self, mode: bool = True) -> Module:
        """Set training mode (`mode=True`) or eval mode on this module and every descendant; returns
        self. Raises ValueError when `mode` is not a bool.
        """
        if not isinstance(mode, bool):
            raise ValueError(f"training mode is expected to be boolean, got {type(mode).__name__} {mode!r}")
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        """Set eval mode on this module and every descendant (`train(False)`); returns self."""
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's `.grad`: to None (default, like torch), or to zeros in place
        with `set_to_none=False`.
        """
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad[...] = 0

    def apply(self, fn: Callable[[Module], None]) -> Module:
        """Call `fn(m)` on every descendant, children first, then on self; returns self."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    # ----------------------------------------------------------------- traversal
    def named_children(self) -> Iterator[tuple[str, Module]]:
        """Yield (name, child) for each direct child module, each object once."""
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self) -> Iterator[Module]:
        """Yield each direct child module once."""
        for _, m in self.named_children():
            yield m

    def named_modules(self, memo: set | None = None, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """Yield (dotted name, module) for this module ('' ) and every descendant, depth first, each
        object once.
        """
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is None:
                continue
            yield from m.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        """Yield this module and every descendant, each object once."""
        for _, m in self.named_modules():
            yield m

    def _named_members(self, store: str, prefix: str, recurse: bool) -> Iterator[tuple[str, Any]]:
        seen = set()
        mods = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mprefix, m in mods:
            for name, v in getattr(m, store).items():
                if v is None or id(v) in seen:
                    continue
                seen.add(id(v))
                yield (f"{mprefix}.{name}" if mprefix else name), v

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """Yield (dotted name, Parameter) of this module and (with `recurse`) its descendants, each
        Parameter once, in registration order: the keys `state_dict()` uses.
        """
        return self._named_members("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """Yield every Parameter of the tree once (what an optimizer takes)."""
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (dotted name, array) of every buffer (running statistics, ...) of the tree, each
        array once.
        """
        return self._named_members("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True) -> Iterator[np.ndarray]:
        """Yield every buffer array of the tree once."""
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # ----------------------------------------------------------------- state dict
    def _local_state(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, p in self._parameters.items():
            if p is not None:
                yield name, p.data
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent_buffers:
                yield name, b

    def _check_state_dict_allowed(self) -> None:
        """Hook for modules whose state cannot be saved yet (lazy modules before their first call)."""

    def state_dict(self, prefix: str = "") -> OrderedDict[str, np.ndarray]:
        """A copy of every parameter and persistent buffer, keyed as torch keys them."""
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        out_meta: dict[str, int] = {}
        for mprefix, m in self.named_modules(prefix=prefix.rstrip(".")):
            m._check_state_dict_allowed()
            key = f"{mprefix}." if mprefix else ""
            out_meta[mprefix] = m._version
            for name, arr in m._local_state():
                out[key + name] = np.array(arr, copy=True)
        out._metadata = out_meta  # type: ignore[attr-defined]
        return out

    def _upgrade_state(self, state: dict[str, np.ndarray], prefix: str,
                       version: int | None) -> Callable[[], None] | None:
        """Hook: fill in or rename `state` entries saved by an older version of this module.

        A hook that must change the module itself before its entries can be matched (a lazy module
        materializing its parameters with the checkpoint's shapes) returns a callable that undoes
        the change; `load_state_dict` calls it when it refuses the state dict, so that a refused
        load leaves the module as it was.
        """
        return None

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy arrays from `state_dict` into this module tree: all of them, or none.

        Raises `StateDictError` (listing every problem) on a shape mismatch, a value that is not a
        real numeric array, or (when `strict`) missing or unexpected keys. On error nothing changes.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"expected a mapping for state_dict, got {type(state_dict).__name__}")
        state = dict(state_dict)
        meta = getattr(state_dict, "_metadata", None) or {}
        targets: dict[str, tuple[Module, str, str]] = {}
        undo: list[Callable[[], None]] = []
        for mprefix, m in self.named_modules():
            key = f"{mprefix}." if mprefix else ""
            u = m._upgrade_state(state, key, meta.get(mprefix) if meta else None)
            if u is not None:
                undo.append(u)
            for name, p in m._parameters.items():
                if p is not None:
                    targets[key + name] = (m, name, "param")
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent_buffers:
                    targets[key + name] = (m, name, "buffer")
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        errors: list[str] = []
        staged: list[tuple[Module, str, str, np.ndarray]] = []
        for key, (m, name, kind) in targets.items():
            if key not in state:
                continue
            cur = m._parameters[name].data if kind == "param" else m._buffers[name]
            try:
                new = _coerce(state[key], cur, key)
            except StateDictError as e:
                errors.append(str(e))
                continue
            staged.append((m, name, kind, new))
        if strict:
            if unexpected:
                errors.insert(0, "Unexpected key(s) in state_dict: "
                              + ", ".join(f'"{k}"' for k in unexpected) + ".")
            if missing:
                errors.insert(0, "Missing key(s) in state_dict: "
                              + ", ".join(f'"{k}"' for k in missing) + ".")
        if errors:
            for u in reversed(undo):
                u()
            raise StateDictError(
                f"Error(s) in loading state_dict for {type(self).__name__} (nothing was loaded):\n\t"
                + "\n\t".join(errors))
        for m, name, kind, new in staged:
            if kind == "param":
                m._parameters[name].data[...] = new
            else:
                m._buffers[name][...] = new
        return IncompatibleKeys(missing, unexpected)

    # ----------------------------------------------------------------- repr
    def extra_repr(self) -> str:
        """The layer's own settings, shown inside its `repr()` (its constructor arguments, as torch
        shows them). Subclasses override it.
        """
        return ""

    def _get_name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        lines = []
        extra = self.extra_repr()
        if extra:
            lines = extra.split("\n")
        for name, m in self._modules.items():
            mod = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {mod}")
        main = self._get_name() + "("
        if lines:
            if len(lines) == 1 and not self._modules:
                main += lines[0]
            else:
                main += "\n  " + "\n  ".join(lines) + "\n"
        return main + ")"

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))


def _coerce(value: Any, current: np.ndarray, key: str) -> np.ndarray:
    """Check that `value` can replace `current` (same shape, real numeric data) and cast it."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - anything numpy cannot read is a bad entry
        raise StateDictError(f'{key}: not an array ({type(value).__name__}): {e}') from None
    if arr.dtype.kind not in "biuf" or arr.dtype == np.bool_:
        raise StateDictError(
            f'{key}: expected a real numeric array like the module\'s {current.dtype}, '
            f'got dtype {arr.dtype}')
    if current.dtype.kind in "iu" and arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise StateDictError(f'{key}: expected integer values ({current.dtype}), got {arr.dtype} '
                                 'with a fractional or non-finite value')
    if arr.shape != current.shape:
        raise StateDictError(
            f'size mismatch for {key}: copying a param with shape {tuple(arr.shape)} from checkpoint, '
            f'the shape in current model is {tuple(current.shape)}.')
    _check_range(arr, current.dtype, key)
    return arr.astype(current.dtype, copy=True)


def _check_range(arr: np.ndarray, dtype: np.dtype, key: str) -> None:
    """Refuse values that the cast to `dtype` would not keep: integers out of its range (numpy
    would wrap them), finite floats beyond its largest value (they would become inf)."""
    if arr.size == 0:
        return
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo, hi = arr.min().item(), arr.max().item()  # Python numbers: exact comparisons
        if lo < info.min or hi >= info.max + 1:
            raise StateDictError(f'{key}: values from {lo} to {hi} do not fit {dtype} '
                                 f'({info.min} to {info.max})')
    elif dtype.kind == "f":
        worst = overflow_in_cast(arr, dtype)
        if worst is not None:
            raise StateDictError(f'{key}: finite values up to {worst:g} in magnitude would become '
                                 f'inf in {dtype} (largest {float(np.finfo(dtype).max):g})')


def overflow_in_cast(arr: np.ndarray, dtype: np.dtype) -> float | None:
    """The largest magnitude among the finite values of `arr` that become inf when cast to the
    floating `dtype`, or None when the cast keeps every finite value finite."""
    if arr.size == 0 or np.dtype(dtype) == arr.dtype:
        return None
    with np.errstate(over="ignore"):
        lost = np.isinf(arr.astype(dtype)) & np.isfinite(arr)
    return float(np.abs(arr[lost]).max()) if lost.any() else None
