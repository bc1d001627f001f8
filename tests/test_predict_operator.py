"""The matrix-free route of ``autontk.predict``: every function given the
train kernel as an operator agrees with its dense route (CG solves and
finite-time Lanczos to 1e-4 relative), with ``MatrixOperator`` and with
``ntk_operator`` of a small MLP."""

from __future__ import annotations

import collections
import functools

import jax.numpy as jnp
import numpy as np
import pytest

import autontk
import models
from autontk import predict
from test_predict import LAYOUTS, Problem, TIMES

pytest.importorskip("autontk.solvers")

RTOL = 1e-4


class DenseCross:
  """A test-train kernel seen only through ``matmat`` (a test fixture that
  wraps a dense matrix)."""

  def __init__(self, k2d):
    self.k2d = jnp.asarray(k2d)
    self.shape = self.k2d.shape
    self.dtype = self.k2d.dtype

  def matmat(self, v):
    return self.k2d @ v


def _close(got, want, rtol=RTOL):
  for g, w in zip(np.atleast_1d(got) if not isinstance(got, tuple) else got,
                  np.atleast_1d(want) if not isinstance(want, tuple)
                  else want):
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
    assert g.shape == w.shape
    np.testing.assert_allclose(g, w, rtol=rtol,
                               atol=rtol * max(np.abs(w).max(), 1e-30))


def _operator(pb):
  return autontk.MatrixOperator(jnp.asarray(pb.kept_2d["k"], jnp.float32))


REGS = {"none": (0., False), "relative": (0.1, False),
        "absolute": (0.05, True)}
FAST = {("middle", "array", "relative"), ("untraced", "inf", "absolute"),
        ("traced", "scalar", "none")}
"""The cases of the default run (each solver call compiles its loops)."""


@pytest.mark.parametrize("layout,times,reg", [
    pytest.param(*case, marks=[] if case in FAST else [pytest.mark.slow])
    for case in ((l, t, r) for l in LAYOUTS for t in TIMES for r in REGS)])
def test_gradient_descent_mse_matrix_free(layout, times, reg):
  pb = Problem(layout, "float32")
  t, reg = TIMES[times], REGS[reg]
  dense = predict.gradient_descent_mse(pb.k, pb.y, 0.5, *reg,
                                       trace_axes=pb.trace_axes)
  free = predict.gradient_descent_mse(_operator(pb), pb.y, 0.5, *reg,
                                      trace_axes=pb.trace_axes)
  want = dense(t, pb.fx0, pb.fx0_test, pb.k_td)
  _close(free(t, pb.fx0, pb.fx0_test, pb.k_td), want)
  _close(free(t, pb.fx0, pb.fx0_test, DenseCross(pb.kept_2d["k_td"])), want)


@pytest.mark.parametrize("layout", [
    pytest.param("traced", marks=pytest.mark.slow), "untraced"])
def test_gp_inference_and_max_learning_rate_matrix_free(layout):
  pb_nngp, pb = Problem(layout, "float32", 1), Problem(layout, "float32", 2)
  kernel = collections.namedtuple("Kernel", "nngp ntk")
  dense = predict.gp_inference(kernel(pb_nngp.k, pb.k), pb.y, 0.1,
                               trace_axes=pb.trace_axes)
  free = predict.gp_inference(kernel(_operator(pb_nngp), _operator(pb)),
                              pb.y, 0.1, trace_axes=pb.trace_axes)
  k_td = kernel(pb_nngp.k_td, pb.k_td)
  k_tt = kernel(pb_nngp.k_tt, pb.k_tt)
  for get in ("nngp", "ntk", "ntkgp"):
    want = dense(get, k_td, k_tt)
    got = free(get, k_td, k_tt)
    _close(got.mean, want.mean)
    _close(got.covariance, want.covariance)
  _close(free("ntk", DenseCross(pb.kept_2d["k_td"])), want.mean)
  for momentum in (0., 0.9):
    _close(predict.max_learning_rate(_operator(pb), 10, momentum),
           predict.max_learning_rate(pb.k, 10, momentum))


def test_gradient_descent_ode_matrix_free():
  pb = Problem("untraced", "float32")
  loss = lambda fx, y: 0.5 * jnp.mean((fx - y) ** 2)
  ts = np.array([0.5, 3.])
  dense = predict.gradient_descent(loss, pb.k, pb.y, 2., 0.9, trace_axes=())
  free = predict.gradient_descent(loss, _operator(pb), pb.y, 2., 0.9,
                                  trace_axes=())
  _close(free(ts, pb.fx0, pb.fx0_test, DenseCross(pb.kept_2d["k_td"])),
         dense(ts, pb.fx0, pb.fx0_test, pb.k_td))


@functools.lru_cache(maxsize=None)
def _mlp():
  return models.mlp(n1=6, n2=3)


@pytest.mark.slow
@pytest.mark.parametrize("trace_axes", [(-1,), ()], ids=["traced", "untraced"])
def test_ntk_operator_predictions(trace_axes):
  """``ntk_operator`` and its ``cross`` in place of dense NTKs."""
  case = _mlp()
  y = jnp.asarray(np.random.default_rng(0).standard_normal((6, 3)),
                  jnp.float32)
  ntk = autontk.ntk_fn(case.f, trace_axes=trace_axes)
  k, k_td = (ntk(case.x1, None, case.params),
             ntk(case.x2, case.x1, case.params))
  op = autontk.ntk_operator(case.f, case.x1, case.params,
                            trace_axes=trace_axes)
  cross = op.cross(case.x2)
  fx0, fx0_test = case.f(case.params, case.x1), case.f(case.params, case.x2)
  for t in (None, np.array([1., 100.])):
    dense = predict.gradient_descent_mse(k, y, diag_reg=0.01,
                                         trace_axes=trace_axes)
    free = predict.gradient_descent_mse(op, y, diag_reg=0.01,
                                        trace_axes=trace_axes)
    _close(free(t, fx0, fx0_test, cross), dense(t, fx0, fx0_test, k_td))
