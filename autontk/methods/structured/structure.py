"""The :class:`Structure` of one parameter use: ∂y/∂θ as an einsum.

A *use* is one equation ``y = prim(..., θ, ...)`` of the linearised network
that consumes a parameter leaf θ. With ``C = ∂f/∂y`` (one cotangent per output
entry, the leading axes ``a``) its Jacobian contribution is
``J[a, θ] = Σ_y C[a, y] ∂y/∂θ``. A structure rule describes that product
without materialising ``∂y/∂θ``:

    J[a..., θ...] = einsum(cot_map(C)[a..., cot_labels],
                           factor_1[labels_1], ..., -> a..., theta_labels)

Labels are small ints local to the structure. A θ label that appears in no
operand means ``J`` is constant along that θ axis (a broadcast); a label
shared by the cotangent and a factor and θ is a diagonal ("batch") axis; a
factor label absent from θ is summed. The pair product (the MJJMP)
``J1 J2ᵀ`` of two uses is then a single einsum over both sides' operands,
contracted in the cheapest order, with traced and diagonal output axes folded
in (:mod:`autontk.methods.structured.contraction`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax


@dataclasses.dataclass(frozen=True)
class Factor:
  """A constant operand of the einsum, with one label per axis."""

  array: jax.Array
  labels: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class IndexFactor:
  """A one-hot operand ``onehot(indices, size)[idx..., v]``, kept implicit.

  Embedding lookups (``gather``) select rows: their factor is one-hot in
  the vocabulary axis ``v`` (a θ label). Two index factors on the same θ label
  pair up as ``indices1[:, None] == indices2[None, :]`` without building the
  one-hot matrices.

  Attributes:
    indices: integer array, one label per axis (``labels``).
    labels: labels of ``indices``' axes.
    label: the θ label the index selects along.
    size: the size of that θ axis.
  """

  indices: jax.Array
  labels: tuple[int, ...]
  label: int
  size: int

  def dense(self, dtype: Any) -> Factor:
    onehot = jax.nn.one_hot(self.indices, self.size, dtype=dtype)
    return Factor(onehot, self.labels + (self.label,))


@dataclasses.dataclass(frozen=True)
class Structure:
  """``J[a, θ] = einsum(cot_map(C)[a, cot_labels], *factors -> a, θ)``.

  Attributes:
    theta_labels: one label per axis of θ.
    cot_labels: one label per axis of ``cot_map(C)`` for one cotangent.
    cot_map: maps one cotangent of the use's output (an array shaped like
      ``y``, or a tuple for multi-output primitives) to the array labelled by
      ``cot_labels``; ``None`` is the identity.
    factors: constant operands (:class:`Factor` or :class:`IndexFactor`).
  """

  theta_labels: tuple[int, ...]
  cot_labels: tuple[int, ...]
  cot_map: Callable[[Any], jax.Array] | None = None
  factors: tuple[Factor | IndexFactor, ...] = ()

  @property
  def is_dense(self) -> bool:
    """The cotangent map already gives the Jacobian, θ axes in order."""
    return not self.factors and self.cot_labels == self.theta_labels


def dense(ndim: int, cot_map: Callable[[Any], jax.Array] | None = None
          ) -> Structure:
  """A materialised Jacobian: ``cot_map(C)`` has exactly θ's axes."""
  labels = tuple(range(ndim))
  return Structure(labels, labels, cot_map)


def dropping_axes(ndim: int, axes) -> "Structure":
  """``y`` is ``θ`` with ``axes`` summed or squeezed away (``reduce_sum``,
  ``squeeze``): θ's other labels pass through in order."""
  dropped = {a % ndim for a in axes}
  return Structure(tuple(range(ndim)),
                   tuple(i for i in range(ndim) if i not in dropped))
