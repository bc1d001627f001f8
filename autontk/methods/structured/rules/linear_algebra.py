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
import jax.numpy as jnp
import numpy as np
from jax import lax

from autontk._compat import primitives as P
from autontk.methods.structured.rule_table import (UseContext, jacobian_rule,
                                                   structure_rule)
from autontk.methods.structured.structure import Factor, Structure


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


def _patches(lhs, lhs_spec, filter_shape, out_spatial, params) -> jax.Array:
  """Input windows, ``(N, C, out spatial..., filter spatial...)``.

  One gather from the padded (and lhs-dilated) input: window ``o`` and
  filter offset ``k`` read position ``o·stride + k·rhs_dilation`` along each
  spatial axis. A single gather compiles to one XLA kernel; one strided
  slice per filter offset compiled to ``K`` kernels plus a concatenate and
  doubled the compile time of CNN programs on CPU.
  ``conv_general_dilated_patches`` computes the same thing as a convolution
  with a one-hot kernel, ``C·K`` times more arithmetic.
  """
  x = jnp.transpose(lhs, lhs_spec)
  pads = [(0, 0, 0), (0, 0, 0)] + [
      (lo, hi, d - 1) for (lo, hi), d in zip(params["padding"],
                                             params["lhs_dilation"])]
  x = lax.pad(x, jnp.zeros((), x.dtype), pads)
  strides = tuple(params["window_strides"])
  nsp = len(filter_shape)
  index = []
  for d, (o, k, st, dil) in enumerate(zip(out_spatial, filter_shape, strides,
                                          params["rhs_dilation"])):
    i = (np.arange(o) * st)[:, None] + (np.arange(k) * dil)[None, :]
    shape = [1] * (2 * nsp)
    shape[d], shape[nsp + d] = o, k
    index.append(i.reshape(shape))
  return x.at[(slice(None), slice(None)) + tuple(index)].get(
      mode="promise_in_bounds")


@structure_rule(P.conv_general_dilated_p)
def conv_structure(ctx: UseContext) -> Structure | None:
  """θ as the kernel: the Jacobian is the input's patches.

  ``y[b, o, s] = Σ_{i,k} patches[b, (g(o), i), s, k] θ[o, i, k]`` with
  ``g(o)`` the feature group of output feature ``o``. With groups the
  patches are indexed by output feature (for depthwise convolutions this
  costs nothing extra; in general a factor ``O/G``).
  """
  p = ctx.params
  if (ctx.position != 1 or ctx.inputs[0] is None or
      p["batch_group_count"] != 1):
    return None
  lhs_spec, rhs_spec, out_spec = _conv_specs(ctx)
  rhs_shape = ctx.theta_aval.shape
  out_shape = ctx.out_aval.shape
  groups = p["feature_group_count"]
  filter_shape = [rhs_shape[d] for d in rhs_spec[2:]]
  out_spatial = [out_shape[d] for d in out_spec[2:]]
  patches = _patches(ctx.inputs[0], lhs_spec, filter_shape, out_spatial, p)
  in_per_group = rhs_shape[rhs_spec[1]]
  out_features = rhs_shape[rhs_spec[0]]
  theta_labels = tuple(range(len(rhs_shape)))
  out_label, in_label = rhs_spec[0], rhs_spec[1]
  batch_label = len(rhs_shape)
  spatial_labels = [batch_label + 1 + i for i in range(len(out_spatial))]
  y_labels = [0] * len(out_spec)
  y_labels[out_spec[0]] = batch_label
  y_labels[out_spec[1]] = out_label
  for d, label in zip(out_spec[2:], spatial_labels):
    y_labels[d] = label
  filter_labels = list(rhs_spec[2:])
  if groups == 1:
    labels = [batch_label, in_label] + spatial_labels + filter_labels
  else:
    n = patches.shape[0]
    patches = patches.reshape((n, groups, in_per_group) + patches.shape[2:])
    # Output feature o reads group o // M: a repeat (a broadcast), and
    # nothing at all for a depthwise layer (M = 1), not a gather.
    per_group = out_features // groups
    if per_group > 1:
      patches = jnp.repeat(patches, per_group, axis=1)
    labels = ([batch_label, out_label, in_label] + spatial_labels +
              filter_labels)
  return Structure(theta_labels, tuple(y_labels),
                   factors=(Factor(patches, tuple(labels)),))


@jacobian_rule(P.conv_general_dilated_p)
def conv_jacobian(ctx: UseContext):
  # A convolution's transpose in either operand is again a convolution; JAX's
  # transpose rules build exactly it (including groups and dilations).
  transpose = jax.linear_transpose(ctx.apply, ctx.theta_aval)
  return lambda c: transpose(c)[0]


