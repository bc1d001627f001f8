"""Where the traced axes of the targets are, and kernels as matrices.

neural-tangents' layout: a kernel computed with ``trace_axes`` lacks those
axes and is read as ``Θ ⊗ I`` over them; its other axes come in zipped
pairs ``(a1, a1', a2, a2', ...)``, unprimed for the first input. Targets of
shape ``y`` become an ``(M, R)`` matrix: ``M`` the product of the kept
(untraced) axes, ``R`` of the traced ones, so that every prediction is a
matrix function of the ``(M, M)`` train kernel applied to ``R`` columns.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autontk._types import Axes


class Layout:
  """The targets' axes: the kept ones index the kernel, the traced ones are
  the columns each kernel acts on separately.

  Attributes:
    y_shape: shape of ``y_train``.
    trace: the traced axes (non-negative, sorted).
    kept: sizes of the kept axes, e.g. ``(N,)`` or ``(N, O)``.
    traced: sizes of the traced axes, e.g. ``(O,)`` or ``()``.
    m: ``prod(kept)``, the side of the train kernel as a matrix.
    r: ``prod(traced)``, the number of columns.
  """

  def __init__(self, y_shape: Sequence[int], trace_axes: Axes):
    ndim = len(y_shape)
    axes = (trace_axes,) if isinstance(trace_axes, int) else tuple(trace_axes)
    for a in axes:
      if not -ndim <= a < ndim:
        raise ValueError(f"trace_axes={trace_axes!r} is out of range for "
                         f"y_train of shape {tuple(y_shape)}.")
    self.y_shape = tuple(y_shape)
    self.trace = tuple(sorted({a % ndim for a in axes}))
    keep = [a for a in range(ndim) if a not in self.trace]
    self.kept = tuple(y_shape[a] for a in keep)
    self.traced = tuple(y_shape[a] for a in self.trace)
    self.m = math.prod(self.kept)
    self.r = math.prod(self.traced)

  def kernel_shape(self, kept1: Sequence[int] | None = None) -> tuple:
    """The dense kernel shape ``zip(kept1, kept)`` (train-train by
    default)."""
    kept1 = self.kept if kept1 is None else tuple(kept1)
    return tuple(d for pair in zip(kept1, self.kept) for d in pair)

  def shape(self, kept: Sequence[int]) -> tuple[int, ...]:
    """The shape of targets with kept axes ``kept``."""
    kept_it, traced_it = iter(kept), iter(self.traced)
    return tuple(next(traced_it) if a in self.trace else next(kept_it)
                 for a in range(len(self.y_shape)))

  def to_matrix(self, y: Any) -> jax.Array:
    """``(..., *y_shape)`` targets -> ``(..., M, R)``."""
    y = jnp.asarray(y)
    lead = y.ndim - len(self.y_shape)
    src = [lead + a for a in self.trace]
    dst = list(range(y.ndim - len(self.trace), y.ndim))
    y = jnp.moveaxis(y, src, dst)
    return y.reshape(y.shape[:lead] + (-1, self.r))

  def from_matrix(self, v: jax.Array, kept: Sequence[int] | None = None
                  ) -> jax.Array:
    """``(..., M', R)`` -> ``(..., *y'_shape)`` where ``y'`` has the kept
    axes ``kept`` (the train targets' by default) and the traced axes."""
    kept = self.kept if kept is None else tuple(kept)
    lead = v.ndim - 2
    v = v.reshape(v.shape[:lead] + kept + self.traced)
    n = len(self.trace)
    src = list(range(v.ndim - n, v.ndim))
    return jnp.moveaxis(v, src, [lead + a for a in self.trace])

  def test_kept(self, m_test: int) -> tuple[int, ...]:
    """The kept axes of test targets with ``m_test`` rows, for kernels
    given as operators (only the leading, batch axis differs)."""
    rest = math.prod(self.kept[1:])
    if not self.kept or m_test % rest:
      raise ValueError(f"a test-train operator with {m_test} rows does not "
                       f"fit targets with kept axes {self.kept}.")
    return (m_test // rest,) + self.kept[1:]


def to_2d(k: Any) -> jax.Array:
  """A zipped kernel ``(a1, b1, a2, b2, ...)`` -> ``(a1·a2..., b1·b2...)``."""
  k = jnp.asarray(k)
  if k.ndim % 2:
    raise ValueError(f"a kernel needs an even number of axes, got shape "
                     f"{k.shape}.")
  k = jnp.transpose(k, tuple(range(0, k.ndim, 2)) + tuple(range(1, k.ndim, 2)))
  half = k.ndim // 2
  return k.reshape(math.prod(k.shape[:half]), math.prod(k.shape[half:]))


def zip_2d(k: jax.Array, kept1: Sequence[int], kept2: Sequence[int]
           ) -> jax.Array:
  """``(..., M1, M2)`` -> ``(..., a1, b1, a2, b2, ...)``: :func:`to_2d`'s
  inverse, over any leading axes."""
  lead = k.ndim - 2
  k = k.reshape(k.shape[:lead] + tuple(kept1) + tuple(kept2))
  n = len(kept1)
  order = list(range(lead)) + [lead + i + j * n for i in range(n)
                               for j in (0, 1)]
  return jnp.transpose(k, order)


def check_kernel(k: Any, expected: tuple, name: str) -> jax.Array:
  """``k`` as an array of shape ``expected``, finite; a ValueError naming
  the argument otherwise."""
  k = jnp.asarray(k)
  if k.shape != tuple(expected):
    raise ValueError(f"`{name}` has shape {k.shape}, expected {tuple(expected)}"
                     f" (the kept, untraced axes of the targets, zipped).")
  check_finite(k, name)
  return k


def check_finite(k: Any, name: str) -> None:
  if isinstance(k, jax.core.Tracer):
    return
  if not bool(np.all(np.isfinite(np.asarray(k)))):
    raise ValueError(f"`{name}` has non-finite entries (NaN or inf).")


def canonicalize_get(get: Any) -> tuple[bool, tuple[str, ...]]:
  """``(get was a single string, get as a tuple)``; ``None`` means
  ``("nngp", "ntk")``."""
  if get is None:
    return False, ("nngp", "ntk")
  if not get:
    raise ValueError('"get" must be non-empty.')
  single = isinstance(get, str)
  get = (get,) if single else tuple(get)
  get = tuple(g.lower() for g in get)
  if len(set(get)) < len(get):
    raise ValueError(f'All entries in "get" must be unique. Got {get}')
  return single, get


def kernel_of(k: Any, g: str) -> Any:
  """The ``g`` kernel of ``k``: ``k`` itself for an array or an operator,
  its attribute for a namedtuple of kernels."""
  if isinstance(k, (jax.Array, np.ndarray)) or hasattr(k, "matmat"):
    return k
  return getattr(k, g)
