"""Structure rules for elementwise linear primitives.

Their Jacobians are diagonal: ``J[a, θ] = C[a, θ] · d[θ]`` with ``d`` a
constant (``mul``, ``div``, ``select_n``) or ±1 (``add``, ``sub``, ``neg``,
copies and casts, which give the cotangent itself). The diagonal is applied
to the cotangent directly (it costs no more than the cotangent). A θ that
the primitive broadcasts along size-1 axes (binary primitives broadcast them
implicitly) sums the cotangent over those axes.
"""

from __future__ import annotations

import jax.numpy as jnp

from autontk import _compat
from autontk._compat import primitives as P
from autontk.methods.structured.rule_table import (UseContext,
                                                   register_facts,
                                                   structure_rule)
from autontk.methods.structured.structure import Structure, dense


def _broadcast_axes(ctx: UseContext) -> tuple[int, ...] | None:
  """Axes along which the primitive broadcasts θ (size 1 in θ, not in y);
  ``None`` if θ's shape does not broadcast to y's."""
  t_shape, y_shape = ctx.theta_aval.shape, ctx.out_aval.shape
  if len(t_shape) != len(y_shape):
    return None
  if any(t != y and t != 1 for t, y in zip(t_shape, y_shape)):
    return None
  return tuple(d for d, (t, y) in enumerate(zip(t_shape, y_shape)) if t != y)


def _diagonal(ctx: UseContext, scale=None,
              sign: float = 1.0) -> Structure | None:
  """``J = diag(sign · scale)``, summed over θ's broadcast axes."""
  axes = _broadcast_axes(ctx)
  if axes is None:
    return None
  if scale is not None:
    scale = jnp.asarray(scale)
    try:
      scale = jnp.broadcast_to(scale, ctx.out_aval.shape)
    except ValueError:
      return None
  dtype = ctx.theta_aval.dtype
  if (scale is None and not axes and sign == 1.0 and
      dtype == ctx.out_aval.dtype):
    # J is the identity: no map, so a use that reaches an output as the
    # identity (a last layer's bias) keeps its cotangent implicit instead of
    # materialising an O × O one.
    return dense(len(ctx.theta_aval.shape))

  def cot_map(c):
    c = c if scale is None else c * scale
    c = c.sum(axes, keepdims=True) if axes else c
    return (c if sign == 1.0 else -c).astype(dtype)

  return dense(len(ctx.theta_aval.shape), cot_map)


@structure_rule(P.add_p, _compat.ADD_ANY, P.convert_element_type_p, P.copy_p)
def identity_structure(ctx: UseContext) -> Structure | None:
  return _diagonal(ctx)


register_facts(P.add_p, _compat.ADD_ANY, additive=(1.0, 1.0))
register_facts(P.copy_p, additive=(1.0,))
# A cast parameter (mixed precision) is the parameter: its uses keep their
# structure.
register_facts(P.convert_element_type_p, additive=(1.0,), passes_param=True)
# Placement hints return their input unchanged.
register_facts(*_compat.PASS_THROUGH, passes_param=True)


@structure_rule(P.sub_p)
def sub_structure(ctx: UseContext) -> Structure | None:
  return _diagonal(ctx, sign=-1.0 if ctx.position == 1 else 1.0)


register_facts(P.sub_p, additive=(1.0, -1.0))


@structure_rule(P.neg_p)
def neg_structure(ctx: UseContext) -> Structure | None:
  return _diagonal(ctx, sign=-1.0)


register_facts(P.neg_p, additive=(-1.0,))


def _scaled(ctx: UseContext, scale) -> Structure | None:
  # A diagonal Jacobian costs as much as the cotangent itself, so it is
  # applied at once: the use then merges with the parameter's other dense
  # uses, which keeps the number of pair products down.
  return _diagonal(ctx, scale)


@structure_rule(P.mul_p)
def mul_structure(ctx: UseContext) -> Structure | None:
  other = ctx.other()
  return None if other is None else _scaled(ctx, other)


@structure_rule(P.div_p)
def div_structure(ctx: UseContext) -> Structure | None:
  other = ctx.other()
  if ctx.position != 0 or other is None:
    return None
  return _scaled(ctx, 1 / jnp.asarray(other))


@structure_rule(P.select_n_p)
def select_n_structure(ctx: UseContext) -> Structure | None:
  which = ctx.inputs[0]
  if ctx.position == 0 or which is None:
    return None
  mask = (jnp.asarray(which).astype(jnp.int32) == ctx.position - 1)
  return _scaled(ctx, mask.astype(ctx.theta_aval.dtype))
