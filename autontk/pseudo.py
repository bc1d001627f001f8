"""The pseudo-NTK: the NTK of the summed logits, at about 1/O of the cost.

Mohamadi, Bae & Sutherland, "A Fast, Well-Founded Approximation to the
Empirical Neural Tangent Kernel" (ICML 2023): for a network with O logits
``f_o``, the pseudo-NTK is the NTK of the single output

    g(x) = Σ_o f_o(x) / √O,

so pNTK(x, x') = (1/O) Σ_{o,o'} Θ_{oo'}(x, x'), an N×N kernel that costs
about one output's worth of Jacobian instead of O. For wide networks at
initialisation the full kernel is close to ``pNTK ⊗ I_O`` (the off-diagonal
logit blocks vanish and the diagonal ones agree), with bounds on the gap
that shrink with width; trained networks drift from it.

:class:`PseudoOutputs` is that transform of ``f``. The summed axes are kept
with size 1, so ``trace_axes``, ``diagonal_axes`` and ``vmap_axes`` name the
same axes as for ``f``: the default ``trace_axes=(-1,)`` gives the ``(N1,
N2)`` pseudo-NTK.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from autontk._types import ApplyFn, PyTree


@dataclasses.dataclass(frozen=True)
class PseudoOutputs:
  """``f`` with its outputs summed over ``axes`` and divided by √size.

  Equal transforms of the same ``f`` compare equal (compiled programs are
  cached by them).

  Attributes:
    f: the network ``f(params, x, **kwargs)``.
    axes: output axes summed (negative values count from the end of each
      output leaf); kept with size 1.

  >>> import jax.numpy as jnp
  >>> g = PseudoOutputs(lambda p, x: x * p, (-1,))
  >>> g(jnp.ones(4), jnp.ones((2, 4)))
  Array([[2.],
         [2.]], dtype=float32)
  """

  f: ApplyFn
  axes: tuple[int, ...]

  def __call__(self, params: PyTree, x: PyTree, **kwargs: Any) -> PyTree:
    return jax.tree.map(self._sum, self.f(params, x, **kwargs))

  def _sum(self, y: jax.Array) -> jax.Array:
    ndim = jnp.ndim(y)
    axes = set()
    for a in self.axes:
      if not -ndim <= a < ndim:
        raise ValueError(f"`pseudo_axes` {self.axes} is out of range for an "
                         f"output of shape {jnp.shape(y)}.")
      axes.add(a % ndim)
    axes = tuple(sorted(axes))
    size = math.prod(jnp.shape(y)[a] for a in axes)
    return jnp.sum(y, axis=axes, keepdims=True) / math.sqrt(max(size, 1))
