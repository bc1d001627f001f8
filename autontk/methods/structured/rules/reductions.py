"""Rules for sums: ``reduce_sum``, ``cumsum`` and ``reduce_window_sum``.

A sum over θ axes makes ``J`` constant along them (labels no operand
carries: the pair einsum multiplies by their size). A cumulative sum's
cotangent is the reversed cumulative sum; pooling's is a padded window sum.
"""

from __future__ import annotations

import jax
from jax import lax

from autontk._compat import primitives as P
from autontk.methods.structured.rule_table import (UseContext, jacobian_rule,
                                                   structure_rule)
from autontk.methods.structured.structure import Structure, dropping_axes


@structure_rule(P.reduce_sum_p)
def reduce_sum_structure(ctx: UseContext) -> Structure:
  return dropping_axes(len(ctx.theta_aval.shape), ctx.params["axes"])


@jacobian_rule(P.cumsum_p)
def cumsum_jacobian(ctx: UseContext):
  axis = ctx.params["axis"]
  reverse = ctx.params["reverse"]
  return lambda c: lax.cumsum(c, axis=axis, reverse=not reverse)


@jacobian_rule(P.reduce_window_sum_p)
def reduce_window_sum_jacobian(ctx: UseContext):
  # The transpose of a window sum is a window sum of the padded, dilated
  # cotangent; JAX's own transpose rule builds exactly that.
  transpose = jax.linear_transpose(ctx.apply, ctx.theta_aval)
  return lambda c: transpose(c)[0]
