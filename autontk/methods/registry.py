"""The method registry: one record per exact NTK method.

A method module registers its ``compute(problem, config) -> list[Array]``
(one kernel per output leaf, in the kernel layout of :mod:`autontk._axes`,
divided by the traced axes' size) with :func:`register`, together with its
options dataclass and, where it has them, its memory variants: configs that
trade speed for memory (NTK-vector products' column chunks). The planner
offers those variants as candidates; the cost model asks the record how many
loop iterations a variant adds.

Every :class:`~autontk._options.Implementation` but ``AUTO`` must have a
record: :mod:`autontk.methods` imports each method module and then calls
:func:`check_complete`, so a method module left out of that list fails the
package's import instead of silently leaving its method out of
:func:`available` (and out of every test sweep built from it).

A method that reads JAX internals names what it did not recognise on this
JAX through ``unsupported``: it is then left out of :func:`available` (so
``auto`` plans without it, after one warning) and raises
:class:`UnsupportedJaxError` when asked for explicitly.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

import jax

from autontk._options import Implementation

MethodFn = Callable[..., list]


def _no_variants(problem: Any) -> tuple[Any, ...]:
  del problem
  return ()


def _no_iterations(problem: Any, config: Any) -> int:
  del problem, config
  return 0


def _supported() -> str | None:
  return None


class UnsupportedJaxError(RuntimeError):
  """A method cannot run on the installed JAX: an internal it reads is
  missing or has changed."""


@dataclasses.dataclass(frozen=True)
class MethodRecord:
  """One registered method.

  Attributes:
    implementation: which method.
    compute: ``compute(problem, config) -> list of kernels``.
    config_type: its options dataclass (``None``: no options).
    memory_variants: ``problem -> configs`` that use less memory than the
      default config (slower); empty for most methods.
    loop_iterations: ``(problem, config) -> int``, the compiled loop
      iterations a memory variant adds over the default config (XLA counts
      a loop body once, so the cost model charges them separately).
    unsupported: ``() -> None`` where the method runs on the installed JAX,
      else the JAX internals it did not recognise.
  """

  implementation: Implementation
  compute: MethodFn
  config_type: type | None = None
  memory_variants: Callable[[Any], tuple[Any, ...]] = _no_variants
  loop_iterations: Callable[[Any, Any], int] = _no_iterations
  unsupported: Callable[[], str | None] = _supported

  def is_memory_variant(self, problem: Any, config: Any) -> bool:
    """``config`` is one of this method's memory variants."""
    return config is not None and self.loop_iterations(problem, config) > 0

  def check_supported(self) -> None:
    """Raises :class:`UnsupportedJaxError` if the method cannot run here."""
    missing = self.unsupported()
    if missing is not None:
      raise UnsupportedJaxError(
          f"{self.implementation.name.lower()} cannot run on jax "
          f"{jax.__version__}: it does not recognise {missing}. Use "
          f"implementation='auto' (it plans with the methods that run), and "
          f"please report this JAX release (see the JAX versions page of the "
          f"documentation).")


_REGISTRY: dict[Implementation, MethodRecord] = {}


def register(implementation: Implementation, config_type: type | None = None,
             *, memory_variants: Callable[[Any], tuple[Any, ...]] | None = None,
             loop_iterations: Callable[[Any, Any], int] | None = None,
             unsupported: Callable[[], str | None] | None = None):
  """Decorator registering ``compute`` as the method for ``implementation``.

  Raises:
    ValueError: ``implementation`` is ``AUTO`` (a choice, not a method), or
      another function is already registered for it.
  """
  if implementation is Implementation.AUTO:
    raise ValueError("AUTO chooses among the methods; it is not one.")

  def wrap(fn: MethodFn) -> MethodFn:
    old = _REGISTRY.get(implementation)
    if old is not None and _name(old.compute) != _name(fn):
      raise ValueError(
          f"{implementation.name.lower()!r} is already registered by "
          f"{_name(old.compute)}; {_name(fn)} cannot register it again.")
    _REGISTRY[implementation] = MethodRecord(
        implementation, fn, config_type, memory_variants or _no_variants,
        loop_iterations or _no_iterations, unsupported or _supported)
    return fn
  return wrap


def _name(fn: Callable) -> str:
  return f"{fn.__module__}.{fn.__qualname__}"


def get(implementation: Implementation) -> MethodRecord:
  """The record of ``implementation`` (raises if none is registered)."""
  try:
    return _REGISTRY[implementation]
  except KeyError:
    raise NotImplementedError(
        f"No method is registered for {implementation.name.lower()!r}."
    ) from None


def registered() -> tuple[Implementation, ...]:
  """Registered methods, in enum order, whether or not they run here."""
  return tuple(i for i in Implementation if i in _REGISTRY)


def missing() -> tuple[Implementation, ...]:
  """Methods (every ``Implementation`` but ``AUTO``) with no record."""
  return tuple(i for i in Implementation
               if i is not Implementation.AUTO and i not in _REGISTRY)


def check_complete() -> None:
  """Raises ImportError when an ``Implementation`` has no registered method.

  Called once the method modules are imported (:mod:`autontk.methods`).
  """
  if missing():
    names = ", ".join(i.name.lower() for i in missing())
    raise ImportError(
        f"No method is registered for {names}: import its module in "
        f"autontk/methods/__init__.py (it registers with @register).")


_WARNED: set[Implementation] = set()


def available() -> tuple[Implementation, ...]:
  """Registered methods that run on the installed JAX, in enum order.

  A method left out is named in one warning (per process), with what it did
  not recognise.
  """
  out = []
  for i in registered():
    gap = _REGISTRY[i].unsupported()
    if gap is None:
      out.append(i)
    elif i not in _WARNED:
      _WARNED.add(i)
      warnings.warn(
          f"autontk: {i.name.lower()} is unavailable on jax "
          f"{jax.__version__}, which changed internals it reads: {gap}. "
          f"'auto' uses the other methods.", RuntimeWarning, stacklevel=2)
  return tuple(out)
