"""Rules for primitives that move, select or replicate entries.

*View rules* come first: applied to a parameter, ``slice``, ``squeeze``,
``transpose``, ``rev``, unit-axis ``reshape`` / ``broadcast_in_dim``, and
``dynamic_slice`` / ``gather`` with indices known at trace time only select
or rearrange its entries, so their output is a view of the parameter (a
sub-parameter, :mod:`autontk.methods.structured.regions`) and the layer
consuming it keeps its structure.

As uses, ``broadcast_in_dim``, ``transpose`` and ``squeeze`` are pure
relabellings of the cotangent's axes (a broadcast axis is summed inside the pair einsum, a
dropped size-1 axis is a θ label no operand carries). ``gather`` in its
embedding form (rows picked by an index array) keeps its one-hot factor
implicit: two lookups pair as an index-equality mask, never as a
vocabulary-sized Jacobian. The others have Jacobian rules: the cotangent is
mapped back to θ's shape by the primitive's transpose (pad for slice, slice
for pad, flip for rev, ...).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from autontk._compat import primitives as P
from autontk.methods.structured.regions import ViewMap, canonical
from autontk.methods.structured.rule_table import (UseContext, jacobian_rule,
                                                   register_facts,
                                                   structure_rule, view_rule)
from autontk.methods.structured.structure import (IndexFactor, Structure,
                                                  dropping_axes)


def _shape(aval) -> tuple[int, ...]:
  return tuple(aval.shape)


@view_rule(P.slice_p)
def slice_view(ctx: UseContext) -> ViewMap:
  shape = _shape(ctx.theta_aval)
  strides = ctx.params["strides"] or (1,) * len(shape)
  picks = tuple(range(s, l, k) for s, l, k in zip(
      ctx.params["start_indices"], ctx.params["limit_indices"], strides))
  return ViewMap(picks, tuple(range(len(shape))))


@view_rule(P.squeeze_p)
def squeeze_view(ctx: UseContext) -> ViewMap:
  shape = _shape(ctx.theta_aval)
  dropped = {d % len(shape) for d in ctx.params["dimensions"]}
  return ViewMap.relabel(shape, [d for d in range(len(shape))
                                 if d not in dropped])


@view_rule(P.transpose_p)
def transpose_view(ctx: UseContext) -> ViewMap:
  return ViewMap.relabel(_shape(ctx.theta_aval), ctx.params["permutation"])


@view_rule(P.rev_p)
def rev_view(ctx: UseContext) -> ViewMap:
  shape = _shape(ctx.theta_aval)
  dims = set(ctx.params["dimensions"])
  picks = tuple(range(n - 1, -1, -1) if d in dims else range(n)
                for d, n in enumerate(shape))
  return ViewMap(picks, tuple(range(len(shape))))


def _unit_axes_view(shape, out_shape) -> ViewMap | None:
  """Output axes matched to input axes in order, skipping size-1 ones."""
  big = [d for d, n in enumerate(shape) if n != 1]
  source, it = [], iter(big)
  for n in out_shape:
    source.append(None if n == 1 else next(it, -1))
  if -1 in source or len([s for s in source if s is not None]) != len(big):
    return None
  if any(shape[s] != n for s, n in zip(source, out_shape) if s is not None):
    return None
  return ViewMap.relabel(shape, source)


@view_rule(P.reshape_p)
def reshape_view(ctx: UseContext) -> ViewMap | None:
  if ctx.params.get("dimensions") is not None:
    return None
  return _unit_axes_view(_shape(ctx.theta_aval), _shape(ctx.out_aval))


@view_rule(P.broadcast_in_dim_p)
def broadcast_in_dim_view(ctx: UseContext) -> ViewMap | None:
  """Only new size-1 axes (``expand_dims``); a real broadcast is a use."""
  shape, out_shape = _shape(ctx.theta_aval), _shape(ctx.out_aval)
  dims = tuple(ctx.params["broadcast_dimensions"])
  if len(ctx.in_avals) != 1 or any(shape[i] != out_shape[d]
                                   for i, d in enumerate(dims)):
    return None
  if any(n != 1 for d, n in enumerate(out_shape) if d not in dims):
    return None
  return ViewMap.relabel(shape, [dims.index(d) if d in dims else None
                                 for d in range(len(out_shape))])


@view_rule(P.dynamic_slice_p)
def dynamic_slice_view(ctx: UseContext) -> ViewMap | None:
  starts = ctx.inputs[1:]
  if ctx.position != 0 or any(s is None for s in starts):
    return None
  shape = _shape(ctx.theta_aval)
  sizes = ctx.params["slice_sizes"]
  # dynamic_slice clamps each start so that the slice stays in bounds.
  picks = []
  for s, n, k in zip(starts, shape, sizes):
    s = int(np.clip(int(s), 0, n - k))
    picks.append(range(s, s + k))
  return ViewMap(tuple(picks), tuple(range(len(shape))))


@view_rule(P.gather_p)
def gather_view(ctx: UseContext) -> ViewMap | None:
  """Known indices along one axis, whole slices elsewhere: ``θ[i]``,
  ``θ[[i, j]]``, ``jnp.take(θ, idx, axis)``."""
  indices = ctx.inputs[1]
  if ctx.position != 0 or indices is None:
    return None
  axis = _gather_axis(ctx)
  if axis is None or indices.ndim > 2 or indices.shape[-1] != 1:
    return None
  shape = _shape(ctx.theta_aval)
  idx = indices[..., 0].reshape(-1)
  if "CLIP" in str(ctx.params.get("mode")).upper():
    idx = np.clip(idx, 0, shape[axis] - 1)
  if (idx < 0).any() or (idx >= shape[axis]).any():
    return None  # filled or promised out of bounds: not a plain selection
  if len(set(idx.tolist())) != len(idx):
    return None  # a repeated entry is weight sharing, not a sub-parameter
  picks = tuple(canonical(idx.tolist()) if d == axis else range(n)
                for d, n in enumerate(shape))
  offset_dims = tuple(ctx.params["dimension_numbers"].offset_dims)
  kept = iter(d for d in range(len(shape)) if d != axis)
  source = [next(kept) if d in offset_dims else axis
            for d in range(len(ctx.out_aval.shape))]
  return ViewMap(picks, tuple(source))


def _gather_axis(ctx: UseContext) -> int | None:
  """The one axis a gather picks along with full slices elsewhere."""
  dn = ctx.params["dimension_numbers"]
  shape = _shape(ctx.theta_aval)
  sizes = tuple(ctx.params["slice_sizes"])
  if (len(dn.start_index_map) != 1 or
      tuple(dn.collapsed_slice_dims) != tuple(dn.start_index_map) or
      getattr(dn, "operand_batching_dims", ())):
    return None
  axis = dn.start_index_map[0]
  if sizes[axis] != 1 or any(sizes[d] != n for d, n in enumerate(shape)
                             if d != axis):
    return None
  return axis


@structure_rule(P.broadcast_in_dim_p)
def broadcast_in_dim_structure(ctx: UseContext) -> Structure:
  t_shape = ctx.theta_aval.shape
  y_shape = ctx.out_aval.shape
  dims = ctx.params["broadcast_dimensions"]
  next_label = len(t_shape)
  y_labels = []
  for d in range(len(y_shape)):
    if d in dims and t_shape[dims.index(d)] == y_shape[d]:
      y_labels.append(dims.index(d))
    else:
      y_labels.append(next_label)
      next_label += 1
  return Structure(tuple(range(len(t_shape))), tuple(y_labels))


register_facts(P.broadcast_in_dim_p, unit_axes=True)


@structure_rule(P.transpose_p)
def transpose_structure(ctx: UseContext) -> Structure:
  perm = tuple(ctx.params["permutation"])
  return Structure(tuple(range(len(perm))), perm)


@structure_rule(P.squeeze_p)
def squeeze_structure(ctx: UseContext) -> Structure:
  return dropping_axes(len(ctx.theta_aval.shape), ctx.params["dimensions"])


register_facts(P.squeeze_p, unit_axes=True)


@jacobian_rule(P.reshape_p)
def reshape_jacobian(ctx: UseContext):
  shape = ctx.theta_aval.shape
  return lambda c: c.reshape(shape)


register_facts(P.reshape_p, unit_axes=True)


@jacobian_rule(P.rev_p)
def rev_jacobian(ctx: UseContext):
  dims = tuple(ctx.params["dimensions"])
  return lambda c: jnp.flip(c, dims) if dims else c


@jacobian_rule(P.slice_p)
def slice_jacobian(ctx: UseContext):
  t_shape = ctx.theta_aval.shape
  y_shape = ctx.out_aval.shape
  starts = ctx.params["start_indices"]
  strides = ctx.params["strides"] or (1,) * len(t_shape)
  config = []
  for t, y, s, k in zip(t_shape, y_shape, starts, strides):
    covered = s + (y - 1) * k + 1 if y else s
    config.append((s, t - covered, k - 1 if y else 0))
  zero = jnp.zeros((), ctx.out_aval.dtype)
  return lambda c: lax.pad(c, zero, config)


@jacobian_rule(P.pad_p)
def pad_jacobian(ctx: UseContext):
  if ctx.position != 0:
    return None  # a padding value that is a parameter: generic path
  config = ctx.params["padding_config"]
  if any(lo < 0 or hi < 0 for lo, hi, _ in config):
    return None
  t_shape = ctx.theta_aval.shape
  starts = [lo for lo, _, _ in config]
  limits = [lo + (t - 1) * (i + 1) + 1 if t else lo
            for (lo, _, i), t in zip(config, t_shape)]
  strides = [i + 1 for _, _, i in config]
  return lambda c: lax.slice(c, starts, limits, strides)


@jacobian_rule(P.concatenate_p)
def concatenate_jacobian(ctx: UseContext):
  axis = ctx.params["dimension"]
  offset = sum(a.shape[axis] for a in ctx.in_avals[:ctx.position])
  size = ctx.theta_aval.shape[axis]
  return lambda c: lax.slice_in_dim(c, offset, offset + size, axis=axis)


@jacobian_rule(P.dynamic_slice_p)
def dynamic_slice_jacobian(ctx: UseContext):
  if ctx.position != 0 or any(v is None for v in ctx.inputs[1:]):
    return None
  starts = ctx.inputs[1:]
  aval = ctx.theta_aval
  # dynamic_update_slice clamps start indices exactly as dynamic_slice does.
  return lambda c: lax.dynamic_update_slice(
      jnp.zeros(aval.shape, c.dtype), c, starts)


@structure_rule(P.gather_p)
def gather_structure(ctx: UseContext) -> Structure | None:
  """Row lookups ``θ[idx]`` along one axis (embeddings, ``jnp.take``)."""
  if ctx.position != 0 or ctx.inputs[1] is None:
    return None
  indices = ctx.inputs[1]
  axis = _gather_axis(ctx)
  if axis is None or indices.shape[-1] != 1:
    return None
  t_shape = tuple(ctx.theta_aval.shape)
  kept = [i for i in range(len(t_shape)) if i != axis]
  offset_dims = tuple(ctx.params["dimension_numbers"].offset_dims)
  y_nd = len(ctx.out_aval.shape)
  batch_labels = []
  y_labels = []
  kept_iter = iter(kept)
  next_label = len(t_shape)
  for d in range(y_nd):
    if d in offset_dims:
      y_labels.append(next(kept_iter))
    else:
      y_labels.append(next_label)
      batch_labels.append(next_label)
      next_label += 1
  idx = indices[..., 0]
  mode = ctx.params.get("mode")
  if mode is not None and "CLIP" in str(mode).upper():
    idx = jnp.clip(idx, 0, t_shape[axis] - 1)
  else:
    # Out-of-bounds lookups read zeros (FILL_OR_DROP), or are promised not
    # to happen: mark them so they match nothing.
    idx = jnp.where((idx >= 0) & (idx < t_shape[axis]), idx, -1)
  return Structure(tuple(range(len(t_shape))), tuple(y_labels),
                   factors=(IndexFactor(idx, tuple(batch_labels), axis,
                                        t_shape[axis]),))
