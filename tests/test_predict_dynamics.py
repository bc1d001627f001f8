"""``autontk.predict``'s ensemble and ODE predictions against the
independent float64 reference: ``gradient_descent_mse_ensemble`` with the
empirical kernels of a small MLP (``empirical_kernel_fn``), and
``gradient_descent`` on MSE and cross-entropy against a float64
integration."""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autontk
import models
import predict_reference as ref
from autontk import predict
import reference
from test_predict import DTYPES, Problem, assert_close, precision


@functools.lru_cache(maxsize=None)
def _mlp():
  return models.mlp(n1=4, n2=3)


def _cast(tree, dtype):
  return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


@functools.lru_cache(maxsize=None)
def _reference_kernels(trace_axes):
  """Train, test-train, test-test NNGP and NTK as kept-axes matrices."""
  case = _mlp()
  with jax.enable_x64(True):
    jac = {n: reference.jacobian_leaves(case.f, case.params, x)[0]
           for n, x in (("train", case.x1), ("test", case.x2))}
    out = {n: np.asarray(case.f(case.params, x), np.float64)[..., None]
           for n, x in (("train", case.x1), ("test", case.x2))}
  pairs = {"k": ("train", "train"), "k_td": ("test", "train"),
           "k_tt": ("test", "test")}
  return {
      g: {name: ref.unzipped(reference.contract(src[a], src[b], trace_axes,
                                                ()))
          for name, (a, b) in pairs.items()}
      for g, src in (("nngp", out), ("ntk", jac))}


ENSEMBLE_CALLS = [  # (t, get, compute_cov, on the test set)
    (None, ("nngp", "ntk"), True, True), (None, "ntk", False, False),
    (None, "nngp", True, False), (1.5, "ntk", True, True),
    (np.array([0.5, 30.]), ("ntk", "nngp"), True, True),
    (np.array([[0.2], [4.]]), "nngp", True, False),
    (2., ("nngp", "ntk"), True, False), (0.7, "ntk", False, True)]


@pytest.mark.parametrize("dtype", [
    "float64", pytest.param("float32", marks=pytest.mark.slow)])
@pytest.mark.parametrize("traced", [
    True, pytest.param(False, marks=pytest.mark.slow)],
    ids=["traced", "untraced"])
def test_ensemble_with_empirical_kernels(dtype, traced):
  trace_axes = (-1,) if traced else ()
  diag_reg, lr = 0.1, 2.
  with precision(dtype):
    case = _mlp()
    params, x_train, x_test = (_cast(v, dtype) for v in
                               (case.params, case.x1, case.x2))
    y = jnp.asarray(np.random.default_rng(0).standard_normal((4, 3)), dtype)
    kernel_fn = autontk.empirical_kernel_fn(case.f, trace_axes=trace_axes)
    predict_fn = predict.gradient_descent_mse_ensemble(
        kernel_fn, x_train, y, lr, diag_reg, trace_axes=trace_axes,
        params=params)
    kernels = _reference_kernels(trace_axes)
    for t, get, compute_cov, on_test in ENSEMBLE_CALLS:
      out = predict_fn(t, x_test if on_test else None, get, compute_cov)
      gets = (get,) if isinstance(get, str) else get
      for g in gets:
        got = out if isinstance(get, str) else getattr(out, g)
        _check_ensemble(got, g, kernels, np.asarray(y, np.float64), t, lr,
                        diag_reg, trace_axes, compute_cov, on_test, dtype)


def _check_ensemble(got, g, kernels, y, t, lr, diag_reg, trace_axes,
                    compute_cov, on_test, dtype):
  o = y.shape[1]
  # On flattened (example, output) targets a traced kernel is K ⊗ I.
  full = {h: {n: np.kron(m, np.eye(o)) if trace_axes else m
              for n, m in kernels[h].items()} for h in kernels}
  n_out = kernels["ntk"]["k_td"].shape[0] // (1 if trace_axes else o)
  out_shape = (n_out, o) if on_test else y.shape
  kept = out_shape[:1] if trace_axes else out_shape
  lead = () if t is None else np.shape(t)
  train = {h: kernels[h]["k"] for h in kernels}
  test_train = {h: kernels[h]["k_td"] for h in kernels}
  if t is None:
    a = ref.regularized(full[g]["k"], diag_reg, False)
    mean = (full[g]["k_td"] @ np.linalg.solve(a, y.reshape(-1)) if on_test
            else y)
  else:
    mean = ref.ensemble_mean(full[g]["k"], full[g]["k_td"] if on_test else
                             None, y, t, lr, diag_reg, False)
  assert_close(got.mean if compute_cov else got, mean, dtype,
               lead + out_shape)
  if not compute_cov:
    return
  if t is None:
    cov = (ref.gp_cov(g, train, test_train,
                      {h: kernels[h]["k_tt"] for h in kernels}, diag_reg,
                      False)[None] if on_test else np.zeros((1,) + train[g].shape))
  else:
    cov = ref.ensemble_cov(g, train, test_train if on_test else None,
                           kernels["nngp"]["k_tt"], t, lr, y.size, diag_reg,
                           False)
  zipped = np.stack([ref.zipped(c, kept, kept) for c in cov])
  assert_close(got.covariance, zipped.reshape(lead + zipped.shape[1:]), dtype)


def test_ensemble_test_kwargs_pair_up():
  """Test kwargs: pairs of arrays become (test, train) for the test-train
  kernel; a value given for the train set only is kept; a differing
  non-array value is an error."""
  calls = []

  def kernel_fn(x1, x2, get, **kwargs):
    calls.append((x2 is None, kwargs))
    n1, n2 = len(x1), len(x1 if x2 is None else x2)
    eye = jnp.eye(n1, n2)
    if isinstance(get, str):
      return eye
    return collections.namedtuple("K", get)(*[eye] * len(get))

  a, b, c = jnp.zeros(1), jnp.ones(1), jnp.full(1, 2.)
  x_train, x_test = jnp.zeros((3, 1)), jnp.zeros((2, 1))
  predict_fn = predict.gradient_descent_mse_ensemble(
      kernel_fn, x_train, jnp.ones((3, 1)), pair=(a, a), scale=1.0, p=a)
  predict_fn(1., x_test, "ntk", True, pair=(b, c), scale=1.0)
  train_train, test_train, test_test = [kw for _, kw in calls]
  assert test_train["pair"][0] is b and test_train["pair"][1] is a
  assert test_test["pair"] == (b, c) and test_train["p"] is a
  with pytest.raises(ValueError, match="scale"):
    predict_fn(1., x_test, "ntk", scale=2.0)


MSE = lambda fx, y: 0.5 * jnp.mean((fx - y) ** 2)
CROSS_ENTROPY = lambda fx, y: -jnp.mean(jax.nn.log_softmax(fx) * y)


def _grad_np(loss_name, y):
  """The loss gradient in NumPy float64, written out by hand."""
  def mse(f):
    return (f - y.reshape(-1)) / y.size

  def cross_entropy(f):
    f = f.reshape(y.shape)
    soft = np.exp(f - f.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    return ((soft * y.sum(-1, keepdims=True) - y) / y.size).reshape(-1)
  return {"mse": mse, "cross_entropy": cross_entropy}[loss_name]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["traced", "untraced"])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("momentum", [None, 0.9])
def test_gradient_descent_ode(dtype, layout, loss, momentum):
  with precision(dtype):
    pb = Problem(layout, dtype)
    y = np.abs(pb.np["y"]) if loss == "cross_entropy" else pb.np["y"]
    ts, lr = np.array([0., 0.5, 3.]), 2.
    predict_fn = predict.gradient_descent(
        {"mse": MSE, "cross_entropy": CROSS_ENTROPY}[loss], pb.k,
        jnp.asarray(y, dtype), lr, momentum, trace_axes=pb.trace_axes)
    train, test = predict_fn(ts, pb.fx0, pb.fx0_test, pb.k_td)
    want_train, want_test = ref.ode(
        _grad_np(loss, y), pb.full["k"], pb.full["k_td"],
        pb.np["fx0"].reshape(-1), pb.np["fx0_test"].reshape(-1), ts, lr,
        momentum)
    assert_close(train, want_train, dtype, (3,) + pb.y_shape)
    assert_close(test, want_test, dtype, (3,) + pb.test_shape)


def test_gradient_descent_ode_state_and_mse_closed_form():
  """An ODEState in gives one out (with momentum variables); on MSE the ODE
  agrees with gradient_descent_mse."""
  with precision("float64"):
    pb = Problem("traced", "float64")
    ode_fn = predict.gradient_descent(MSE, pb.k, pb.y, 0.5, momentum=0.5)
    state = ode_fn(np.array([1., 2.]), predict.ODEState(pb.fx0, pb.fx0_test),
                   None, pb.k_td)
    assert isinstance(state, predict.ODEState)
    assert state.qx_train.shape == (2,) + pb.y_shape
    resumed = ode_fn(1., predict.ODEState(*(v[0] for v in state)), None,
                     pb.k_td)
    np.testing.assert_allclose(resumed.fx_train, state.fx_train[1],
                               rtol=1e-6)
    plain = predict.gradient_descent(MSE, pb.k, pb.y, 0.5)
    closed = predict.gradient_descent_mse(pb.k, pb.y, 0.5)
    ts = np.array([0.3, 7.])
    for got, want in zip(plain(ts, pb.fx0, pb.fx0_test, pb.k_td),
                         closed(ts, pb.fx0, pb.fx0_test, pb.k_td)):
      assert_close(got, want, "float64")
    assert plain(ts, None, pb.fx0_test, pb.k_td).shape == (2,) + pb.test_shape
    with pytest.raises(ValueError, match="momentum"):
      plain(1., predict.ODEState(pb.fx0, None, pb.fx0))
