"""How the cost model prices loops and strided copies.

A loop costs its trip count times its body (FLOPs, bytes, kernels); a step
of a scan reads its slice of the stacked operands, not the whole stack; a
transpose that moves the minor dimension is priced at the probe's strided
bandwidth. Every expected count is worked out by hand from the shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from autontk._plan import Plan
from autontk._options import Implementation
from autontk.costmodel import device, hlo, ops
from autontk.costmodel.device import DeviceConstants
from autontk.costmodel.estimate import CostEstimate
from autontk.costmodel.features import CostFeatures
from autontk.costmodel.predict import RooflinePredictor

N, D = 8, 32
DOT = 2 * N * D * D


def _layers(h, ws):
  for j in range(ws.shape[0]):
    h = jnp.tanh(h @ ws[j])
  return h


def _features(fn, *args) -> tuple[CostFeatures, CostFeatures]:
  lowered = jax.jit(fn).lower(*args)
  return hlo.analyse_lowered(lowered), hlo.analyse_compiled(lowered.compile())


def test_scan_over_stacked_weights_costs_trips_times_one_step():
  """A scan over layers reads each layer's weights once, not the stack per
  step: bytes, FLOPs and kernels are the trip count times one step's."""
  trips, k = 16, 3
  ws = jnp.full((trips, k, D, D), 0.01)
  h = jnp.ones((N, D))
  scanned = lambda h, ws: lax.scan(lambda c, w: (_layers(c, w), None), h,
                                   ws)[0]
  low, comp = _features(scanned, h, ws)
  _, step = _features(_layers, h, ws[0])
  weights = trips * k * D * D * 4  # every layer's weights, read once
  for f in (low, comp):
    assert f.flops == pytest.approx(trips * k * DOT, rel=0.05)
    assert f.inner_loop_iterations == trips
  assert weights <= comp.bytes_accessed <= 2 * trips * step.bytes_accessed
  # Not the whole stack read by each of a step's slices.
  assert comp.bytes_accessed < trips * k * weights / 4
  assert comp.kernels >= trips * k


def test_nested_fori_loops_multiply_their_trip_counts():
  w, x = jnp.full((D, D), 0.01), jnp.ones((N, D))

  def f(x, w):
    inner = lambda i, h: jnp.tanh(h @ w)
    return lax.fori_loop(0, 3, lambda i, h: lax.fori_loop(0, 5, inner, h), x)

  for feats in _features(f, x, w):
    assert feats.flops == pytest.approx(15 * DOT, rel=0.05)
    assert feats.inner_loop_iterations == 3 + 3 * 5
    assert feats.kernels >= 15


def test_while_loop_with_a_static_bound_is_counted():
  w, x = jnp.full((D, D), 0.01), jnp.ones((N, D))

  def f(x, w):
    return lax.while_loop(lambda c: c[0] < 6,
                          lambda c: (c[0] + 1, jnp.tanh(c[1] @ w)), (0, x))[1]

  low, comp = _features(f, x, w)
  assert low.flops == pytest.approx(6 * DOT, rel=0.05)
  assert low.inner_loop_iterations == 6
  assert comp.flops == pytest.approx(6 * DOT, rel=0.05)


@pytest.mark.parametrize("dims, perm, layouts, strided", [
    ((64, 32), (1, 0), (None, None), True),
    ((8, 1, 32), (1, 0, 2), (None, None), False),  # keeps the minor dim
    ((4, 8, 16), (1, 0, 2), (None, None), False),
    ((4, 8, 16), (0, 2, 1), (None, None), True),
    ((8, 16), (0, 1), ((1, 0), (0, 1)), True),  # a layout-changing copy
    ((8, 16), (1, 0), ((1, 0), (0, 1)), False),  # a transpose as a bitcast
])
def test_moves_minor(dims, perm, layouts, strided):
  assert ops.moves_minor(dims, perm, *layouts) == strided


BIG = 2**19  # floats: 4 MB of traffic copied, past a core's caches
assert 8 * BIG > ops.STRIDED_BYTES


def test_strided_bytes_of_transposes_lowered_and_compiled():
  x = jax.ShapeDtypeStruct((1024, BIG // 1024), jnp.float32)
  for fn, strided in ((lambda a: a.T + 1.0, True),
                      (lambda a: a * 2.0 + 1.0, False),
                      (lambda a: a.reshape(32, 32, -1).transpose(1, 0, 2)
                       + 1.0, False)):
    for f in _features(fn, x):
      if strided:
        assert f.strided_bytes == pytest.approx(8 * BIG, rel=0.05)
      else:
        assert f.strided_bytes == 0.0


def test_a_small_transpose_is_cache_resident():
  for f in _features(lambda a: a.T + 1.0, jnp.ones((128, 128))):
    assert f.strided_bytes == 0.0
    assert f.resident_bytes == pytest.approx(f.bytes_accessed)


def test_strided_bytes_inside_a_loop_count_every_iteration():
  xs = jax.ShapeDtypeStruct((5, 1024, BIG // 1024), jnp.float32)
  scanned = lambda xs: lax.scan(lambda c, x: (c + x.T.sum(), x.T * 2.0),
                                0.0, xs)[1]
  _, comp = _features(scanned, xs)
  assert comp.strided_bytes >= 5 * 8 * BIG


def test_roofline_charges_strided_bytes_at_their_bandwidth():
  c = DeviceConstants(1e11, 1e10, 0.0, 0.0, resident_bytes_per_s=1e11,
                      strided_bytes_per_s=1e9)
  feats = CostFeatures("m", 0.0, 3e9, 0.0, resident_bytes=1e9,
                       strided_bytes=1e9)
  assert RooflinePredictor(c).predict(feats) == pytest.approx(
      1e9 / 1e10 + 1e9 / 1e11 + 1e9 / 1e9)
  unmeasured = DeviceConstants(1e11, 1e10, 0.0, 0.0)
  assert RooflinePredictor(unmeasured).predict(
      CostFeatures("m", 0.0, 3e9, 0.0, strided_bytes=1e9)) == pytest.approx(
          0.3)


def test_probe_measures_the_strided_bandwidth_and_scanned_bodies():
  assert device.measure_strided_bandwidth(rows=200) > 0
  assert "strided_bytes_per_s" in device.missing({})
  scans = 0
  for fn, args, flops in device._launch_programs():
    kernels, iterations = device.count_launches(
        jax.jit(fn).lower(*args).compile())
    if iterations and flops:  # a scanned body of several contractions
      scans += 1
      assert kernels >= 4 * iterations
  assert scans >= 2


def test_constants_and_estimate_records_round_trip():
  c = DeviceConstants(1e11, 1e10, 1e-5, 1e-6, "cpu", "cpu", 1e9, 1e8, 2e-7,
                      5e10, 2e9)
  assert DeviceConstants.from_dict(c.to_dict()) == c
  stale = {k: v for k, v in c.to_dict().items()
           if k != "strided_bytes_per_s"}
  assert device.missing(stale) == ["strided_bytes_per_s"]
  e = CostEstimate(Plan(Implementation.STRUCTURED_DERIVATIVES),
                   CostFeatures("structured_derivatives", 1.0, 2.0, 3.0,
                                strided_bytes=1.5, inner_loop_iterations=4),
                   predicted_time=1e-3)
  assert CostEstimate.from_dict(e.to_dict()) == e
