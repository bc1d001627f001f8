"""Structure rules for ``dot_general`` and ``conv_general_dilated``.

For ``y = dot_general(X, θ)`` the Jacobian is ``X ⊗ I`` on θ's free axes:
``J[a, θ] = Σ C[a, y] X[...]`` with θ's contracting axes shared with X and its
batch axes shared with y. The pair product then never forms ``J``: the einsum
can contract ``X1 X2ᵀ`` first (the paper's O(N²·O²·W) dense-layer MJJMP).
A convolution's kernel Jacobian is the same with X replaced by the input's
patches.
"""

from __future__ import annotations


import jax
from jax import lax

from autontk.methods.structured.rule_table import (UseContext, jacobian_rule,
                                                   structure_rule)
from autontk.methods.structured.structure import Factor, Structure

P = jax.extend.core.primitives


@structure_rule(P.dot_general_p)
def dot_general_structure(ctx: UseContext) -> Structure | None:
  other = ctx.other()
  if other is None:
    return None
  (lc, rc), (lb, rb) = ctx.params["dimension_numbers"]
  pos = ctx.position
  t_contract, x_contract = (lc, rc) if pos == 0 else (rc, lc)
  t_batch, x_batch = (lb, rb) if pos == 0 else (rb, lb)
  t_nd = len(ctx.theta_aval.shape)
  x_nd = other.ndim
  theta_labels = tuple(range(t_nd))
  x_labels = [0] * x_nd
  for t, x in zip(t_contract, x_contract):
    x_labels[x] = t
  for t, x in zip(t_batch, x_batch):
    x_labels[x] = t
  next_label = t_nd
  x_free = [i for i in range(x_nd) if i not in x_contract and i not in x_batch]
  for i in x_free:
    x_labels[i] = next_label
    next_label += 1
  t_free = [i for i in range(t_nd) if i not in t_contract and i not in t_batch]
  y_batch = list(t_batch)
  x_free_labels = [x_labels[i] for i in x_free]
  y_labels = y_batch + (t_free + x_free_labels if pos == 0 else
                        x_free_labels + t_free)
  return Structure(theta_labels, tuple(y_labels),
                   factors=(Factor(other, tuple(x_labels)),))


def _conv_specs(ctx: UseContext):
  dn = ctx.params["dimension_numbers"]
  return dn.lhs_spec, dn.rhs_spec, dn.out_spec


@structure_rule(P.conv_general_dilated_p)
def conv_structure(ctx: UseContext) -> Structure | None:
  """θ as the kernel, one feature/batch group: patches of the input."""
  p = ctx.params
  if (ctx.position != 1 or ctx.inputs[0] is None or
      p["feature_group_count"] != 1 or p["batch_group_count"] != 1):
    return None
  lhs = ctx.inputs[0]
  lhs_spec, rhs_spec, out_spec = _conv_specs(ctx)
  rhs_shape = ctx.theta_aval.shape
  n_sp = len(rhs_spec) - 2
  filter_shape = [rhs_shape[d] for d in rhs_spec[2:]]
  patches = lax.conv_general_dilated_patches(
      lhs, filter_shape, p["window_strides"], p["padding"],
      lhs_dilation=p["lhs_dilation"], rhs_dilation=p["rhs_dilation"],
      dimension_numbers=p["dimension_numbers"],
      precision=lax.Precision.HIGHEST)
  # Patches are laid out like the output, with the feature axis holding
  # (in-feature, filter spatial...) flattened, in-feature major.
  theta_labels = tuple(range(len(rhs_shape)))
  out_feature, in_feature = rhs_spec[0], rhs_spec[1]
  batch_label = len(rhs_shape)
  spatial_labels = [batch_label + 1 + i for i in range(n_sp)]
  y_labels = [0] * len(out_spec)
  y_labels[out_spec[0]] = batch_label
  y_labels[out_spec[1]] = out_feature
  for i, d in enumerate(out_spec[2:]):
    y_labels[d] = spatial_labels[i]
  patch_axes = [0] * len(out_spec)
  patch_axes[out_spec[0]] = (batch_label,)
  patch_axes[out_spec[1]] = (in_feature,) + tuple(rhs_spec[2:])
  for i, d in enumerate(out_spec[2:]):
    patch_axes[d] = (spatial_labels[i],)
  shape = []
  for d, labels in enumerate(patch_axes):
    if d == out_spec[1]:
      shape.extend([rhs_shape[in_feature]] + filter_shape)
    else:
      shape.append(patches.shape[d])
  patches = patches.reshape(shape)
  labels = tuple(l for ls in patch_axes for l in ls)
  return Structure(theta_labels, tuple(y_labels),
                   factors=(Factor(patches, labels),))


@jacobian_rule(P.conv_general_dilated_p)
def conv_jacobian(ctx: UseContext):
  # A convolution's transpose in either operand is again a convolution; JAX's
  # transpose rules build exactly it (including groups and dilations).
  transpose = jax.linear_transpose(ctx.apply, ctx.theta_aval)
  return lambda c: transpose(c)[0]


