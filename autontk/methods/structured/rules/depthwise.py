"""Depthwise convolutions evaluated as shifted multiply-adds.

A convolution with one input channel per feature group (``feature_group_count``
equal to the input's channels: MobileNet's depthwise layers) is, per output
feature ``o`` reading input channel ``o // M`` (``M`` output features per
group), a sum over the ``K`` filter offsets of the shifted input times one
weight: ``y[n, o, s] = Σ_k x[n, o // M, s·stride + k·dilation] w[o, k]``.
XLA:CPU's grouped-convolution kernel runs this tens of times slower than
the ``K`` fused multiply-adds (0.2 GFLOP/s against several), and the
probing pass of structured derivatives runs it, and its transpose, once per
output cotangent. The walk evaluates such equations with :func:`depthwise`
instead (:func:`.rule_table.evaluate`); its transpose is again slices, pads
and multiplies. Same FLOPs and values up to summation order: this is a
tuning of the CPU backend, not a change of the arithmetic.

>>> import jax.numpy as jnp
>>> from jax import lax
>>> x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 1, 2))
>>> dn = lax.conv_dimension_numbers(x.shape, w.shape,
...                                 ("NHWC", "HWIO", "NHWC"))
>>> params = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)),
...               lhs_dilation=(1, 1), rhs_dilation=(1, 1),
...               dimension_numbers=dn, feature_group_count=2,
...               batch_group_count=1, preferred_element_type=None)
>>> float(depthwise(params, x, w)[0][0, 2, 2, 0])
9.0
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from autontk._compat import primitives as P
from autontk.methods.structured.rule_table import lowering_rule

# Above this many filter offsets the multiply-adds stop paying off.
MAX_TAPS = 49


def _is_depthwise(params: dict[str, Any], lhs, rhs) -> bool:
  dn = params["dimension_numbers"]
  groups = params["feature_group_count"]
  return (params["batch_group_count"] == 1 and groups > 1 and
          all(d == 1 for d in params["lhs_dilation"]) and
          lhs.shape[dn.lhs_spec[1]] == groups and
          rhs.shape[dn.rhs_spec[1]] == 1 and
          math.prod(rhs.shape[d] for d in dn.rhs_spec[2:]) <= MAX_TAPS)


@lowering_rule(P.conv_general_dilated_p)
def depthwise(params: dict[str, Any], lhs: jax.Array,
              rhs: jax.Array) -> list[jax.Array] | None:
  """A depthwise ``conv_general_dilated`` as ``K`` shifted multiply-adds;
  ``None`` for any other convolution.

  Args:
    params: the equation's parameters.
    lhs: the input, laid out by ``dimension_numbers``.
    rhs: the kernel, one input feature per group.

  Returns:
    ``[y]``, laid out as the convolution's output.
  """
  if not _is_depthwise(params, lhs, rhs):
    return None
  dn = params["dimension_numbers"]
  # Slices and products in the operands' own layouts: a transpose to a
  # canonical one would cost a copy of every cotangent on the way in and out.
  c_axis, sp_axes = dn.lhs_spec[1], list(dn.lhs_spec[2:])
  w = jnp.transpose(rhs, dn.rhs_spec)[:, 0]      # (O, filter...)
  out_features = w.shape[0]
  x = lhs
  if out_features != x.shape[c_axis]:
    x = jnp.repeat(x, out_features // x.shape[c_axis], axis=c_axis)
  strides, dilation = params["window_strides"], params["rhs_dilation"]
  filt = w.shape[1:]
  # Each tap places the input in a common frame at its own offset (a pad);
  # the taps' weighted sum, cropped (strided) to the output, is y. Its
  # transpose, which the probing pass runs, is one pad of the cotangent and
  # one slice per tap: a single fused multiply-add, where slicing a padded
  # input would transpose into one materialised pad per tap.
  reach = [r * (k - 1) for k, r in zip(filt, dilation)]
  out_sp = [(x.shape[d] + lo + hi - e - 1) // s + 1 for d, (lo, hi), e, s in
            zip(sp_axes, params["padding"], reach, strides)]
  tap_shape = [1] * x.ndim
  tap_shape[c_axis] = out_features
  acc = None
  for offset in itertools.product(*[range(k) for k in filt]):
    pads = [(0, 0, 0)] * x.ndim
    for d, k, r, e, (lo, hi) in zip(sp_axes, offset, dilation, reach,
                                     params["padding"]):
      pads[d] = (lo + e - k * r, hi + k * r, 0)
    term = lax.pad(x, jnp.zeros((), x.dtype), pads)
    term = term * w[(slice(None),) + offset].reshape(tap_shape)
    acc = term if acc is None else acc + term
  start, limit, step = [0] * x.ndim, list(acc.shape), [1] * x.ndim
  for d, e, o, s in zip(sp_axes, reach, out_sp, strides):
    start[d], limit[d], step[d] = e, e + (o - 1) * s + 1, s
  acc = lax.slice(acc, start, limit, step)
  dtype = params.get("preferred_element_type") or jnp.result_type(lhs, rhs)
  # lhs and out specs name the same roles (batch, feature, spatial...).
  perm = [dn.lhs_spec[j] for j in np.argsort(dn.out_spec)]
  y = jnp.transpose(acc, perm).astype(dtype)
  return [y]
