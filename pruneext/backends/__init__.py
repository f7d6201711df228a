"""Backends: who computes the masks, and how one is chosen.

A backend implements the two mask ops (see pruneext.ops) for some devices
and dtypes. `torch` (pure PyTorch, torch.topk) is always present; the kernel
backends (`cpu`, `cuda`, `triton`) register themselves when they load.

The choice, in order: `use_backend(...)` in the current context, else
`set_backend(...)`, else the environment variable PRUNEEXT_BACKEND, else
"auto". "auto" takes, per tensor, the fastest registered backend that serves
its device and dtype (the table BACKENDS). An explicitly chosen backend
that cannot serve a tensor raises; it never switches silently.

This package is the registry; the backends are its modules (reference.py,
native.py, triton/), and contract.py is what they share (csrc's shared
headers in Python). README.md here says how a call finds its kernel and
how to add a backend.
"""
import contextlib
import contextvars
import importlib
import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch

# what a kernel backend serves unless it says otherwise, and how integer
# scores reach it (the contract's tables; pruneext.ops reads them here)
from .contract import INTEGER_SCORE_VIEWS, KERNEL_MASK_DTYPES, KERNEL_SCORE_DTYPES  # noqa: F401

AUTO = "auto"


@dataclass(frozen=True)
class Declared:
    """A backend this package knows of: its name, the module of this
    package that registers it when imported, and where "auto" tries it:
    {device type: rank}, lower ranks first."""

    name: str
    module: str
    auto: dict


# Every backend, in one place: adding one is a line here and its module
# (README.md). The order is available_backends()' order. Devices that no
# rank names get the torch backend.
BACKENDS = (
    Declared("torch", "reference", {"cpu": 9, "cuda": 9}),  # everywhere, the fallback
    Declared("cpu", "native", {"cpu": 0}),
    Declared("cuda", "native", {"cuda": 0}),
    Declared("triton", "triton", {"cuda": 1}),
)
KNOWN = tuple(d.name for d in BACKENDS)

# Fastest first, per device type (from BACKENDS' ranks).
_AUTO_ORDER = {
    device: tuple(d.name for d in sorted((d for d in BACKENDS if device in d.auto), key=lambda d: d.auto[device]))
    for device in sorted({device for d in BACKENDS for device in d.auto})
}

log = logging.getLogger("pruneext")


@dataclass(frozen=True)
class Phases:
    """The selection's passes as separate ops (csrc/ops.cpp), for a driver
    that runs them itself (pruneext/select_loop.py)."""

    key_histogram: Callable
    count_equal: Callable
    mask_write: Callable
    # the fused select's threshold in one call ([T, below, equal]), where
    # the backend has it; the driver runs the histogram passes otherwise
    select_threshold: Optional[Callable] = None


@dataclass(frozen=True)
class BitOps:
    """The lean training ops on masks packed to bits (csrc/ops.cpp):
    prune(weights, bits, threshold, ties) -> pruned counts, in place;
    apply(tensors, bits): zero what the bits pruned, in place."""

    prune: Callable
    apply: Callable


@dataclass(frozen=True)
class Backend:
    name: str
    devices: tuple  # device types served, e.g. ("cpu",)
    l1_mask: Callable
    l1_mask_global: Callable
    score_dtypes: Optional[frozenset] = KERNEL_SCORE_DTYPES  # None: any real dtype
    mask_dtypes: Optional[frozenset] = KERNEL_MASK_DTYPES
    phases: Optional[Phases] = None  # None: only the fused ops
    bits: Optional[BitOps] = None  # None: no bit-mask ops
    # the select within groups (row and N:M scopes, ops.l1_mask_grouped);
    # None: the backend has none
    l1_mask_grouped: Optional[Callable] = None

    def refusal(self, device_type, score_dtype, mask_dtype, phases=False, bits=False, grouped=False):
        """Why this backend cannot serve such tensors, or None if it can."""
        if grouped and self.l1_mask_grouped is None:
            return f"pruneext backend {self.name!r} has no grouped (row, N:M) select"
        if phases and self.phases is None:
            return f"pruneext backend {self.name!r} has no selection phase ops"
        if bits and self.bits is None:
            return f"pruneext backend {self.name!r} has no bit-mask ops"
        if device_type not in self.devices:
            return (
                f"pruneext backend {self.name!r} cannot serve tensors on device "
                f"{device_type!r} (it serves {', '.join(self.devices)})"
            )
        if self.score_dtypes is not None:
            score_dtype = INTEGER_SCORE_VIEWS.get(score_dtype, score_dtype)
        if self.score_dtypes is not None and score_dtype not in self.score_dtypes:
            return f"pruneext backend {self.name!r} does not support scores of dtype {score_dtype}"
        if mask_dtype is not None and self.mask_dtypes is not None and mask_dtype not in self.mask_dtypes:
            return f"pruneext backend {self.name!r} does not support masks of dtype {mask_dtype}"
        return None


_registry = {}
_unavailable = {name: "not loaded" for name in KNOWN}


def register(backend: Backend):
    _registry[backend.name] = backend
    _unavailable.pop(backend.name, None)


def mark_unavailable(name, reason):
    _registry.pop(name, None)
    _unavailable[name] = reason


def available_backends():
    """Names of the backends that can run here, in the order of KNOWN."""
    return [name for name in KNOWN if name in _registry]


def unavailable_backends():
    """{name: reason} for the backends that cannot run here."""
    return dict(_unavailable)


def _check_name(name):
    if name is None:
        return AUTO
    if not isinstance(name, str) or (name != AUTO and name not in KNOWN):
        raise ValueError(
            f"unknown pruneext backend {name!r}; choose one of: {', '.join((AUTO,) + KNOWN)}"
        )
    return name


_global_choice = _check_name(os.environ.get("PRUNEEXT_BACKEND") or None)
_context_choice = contextvars.ContextVar("pruneext_backend", default=None)


def set_backend(name):
    """Choose the backend for this process ("auto" or None: per tensor)."""
    global _global_choice
    _global_choice = _check_name(name)


def get_backend():
    """The backend name in force here ("auto" unless one was chosen)."""
    return _context_choice.get() or _global_choice


@contextlib.contextmanager
def use_backend(name):
    """Choose the backend within a `with` block (this thread/context only)."""
    token = _context_choice.set(_check_name(name))
    try:
        yield
    finally:
        _context_choice.reset(token)


def resolve(device, score_dtype, mask_dtype=None, phases=False, bits=False, grouped=False) -> Backend:
    """The backend that computes masks for such tensors (with `phases`: one
    that has the selection's phase ops; with `bits`: the bit-mask ops too;
    with `grouped`: the grouped select)."""
    device_type = torch.device(device).type
    choice = get_backend()
    if choice == AUTO:
        refusals = []
        for name in _AUTO_ORDER.get(device_type, ("torch",)):
            backend = _registry.get(name)
            if backend is None:
                continue
            reason = backend.refusal(device_type, score_dtype, mask_dtype, phases, bits, grouped)
            if reason is None:
                if refusals and log.isEnabledFor(logging.DEBUG):
                    log.debug("auto backend: %s, because %s", name, "; ".join(refusals))
                return backend
            refusals.append(reason)
        # Only the torch backend is left; let it explain what it refuses.
        choice = "torch"
    backend = _registry.get(choice)
    if backend is None:
        raise RuntimeError(f"pruneext backend {choice!r} is not available: {_unavailable[choice]}")
    reason = backend.refusal(device_type, score_dtype, mask_dtype, phases, bits, grouped)
    if reason is not None:
        missing = (
            device_type not in backend.devices
            or (phases and backend.phases is None)
            or (bits and backend.bits is None)
            or (grouped and backend.l1_mask_grouped is None)
        )
        error = RuntimeError if missing else TypeError
        raise error(reason)
    return backend


def fall_back(backend, reason):
    """The backend to use when `backend` cannot serve these particular
    values (not their dtype): the torch backend under auto, with `reason` in
    the debug log; an explicitly chosen backend raises TypeError instead."""
    if get_backend() != AUTO:
        raise TypeError(f"pruneext backend {backend.name!r} cannot serve this call: {reason}")
    log.debug("auto backend: torch, because %s", reason)
    return _registry["torch"]


def _load():
    """Import each declared backend's module, which registers what can run
    here and marks the rest unavailable with the reason. A module that
    cannot be imported at all (Triton absent) leaves its backends
    unavailable; pruneext keeps working on the others."""
    for module in dict.fromkeys(d.module for d in BACKENDS):
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ImportError as e:
            for d in BACKENDS:
                if d.module == module and _unavailable.get(d.name) == "not loaded":
                    _unavailable[d.name] = f"{type(e).__name__}: {e}"


_load()
