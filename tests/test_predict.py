"""``autontk.predict`` against the independent float64 reference
(``predict_reference.py``): every function and option, dense kernels, in
float64 (1e-6 relative) and float32 (1e-4)."""

from __future__ import annotations

import collections
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import predict_reference as ref
from autontk import predict

N, N_TEST, O, C, P = 5, 3, 2, 2, 40

# name: (target shape, trace_axes, kept train axes, kept test axes)
LAYOUTS = {
    "traced": ((N, O), (-1,), (N,), (N_TEST,)),
    "untraced": ((N, O), (), (N, O), (N_TEST, O)),
    "middle": ((N, O, C), (1,), (N, C), (N_TEST, C)),
}
RTOL = {"float64": 1e-6, "float32": 1e-4}


class Problem:
  """Kernels (zipped, as the library takes them, and as full reference
  matrices) and targets of one layout, in one dtype."""

  def __init__(self, layout: str, dtype: str, seed: int = 0):
    y_shape, self.trace_axes, kept, kept_test = LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    m, m_test = int(np.prod(kept)), int(np.prod(kept_test))
    j = rng.standard_normal((m + m_test, P)) / P ** 0.5
    k_all = j @ j.T
    self.y_shape = y_shape
    self.test_shape = (N_TEST,) + y_shape[1:]
    self.np = {
        "k": ref.zipped(k_all[:m, :m], kept, kept),
        "k_td": ref.zipped(k_all[m:, :m], kept_test, kept),
        "k_tt": ref.zipped(k_all[m:, m:], kept_test, kept_test),
        "y": rng.standard_normal(y_shape),
        "fx0": rng.standard_normal(y_shape) * 0.3,
        "fx0_test": rng.standard_normal(self.test_shape) * 0.3,
    }
    self.kept_2d = {"k": k_all[:m, :m], "k_td": k_all[m:, :m],
                    "k_tt": k_all[m:, m:]}
    self.full = {
        "k": ref.full_operator(self.np["k"], y_shape, self.trace_axes),
        "k_td": ref.full_operator(self.np["k_td"], y_shape, self.trace_axes),
    }
    self.dtype = dtype

  def __getattr__(self, name):
    if name in ("k", "k_td", "k_tt", "y", "fx0", "fx0_test"):
      return jnp.asarray(self.np[name], self.dtype)
    raise AttributeError(name)


def precision(dtype: str):
  return jax.enable_x64(dtype == "float64")


def assert_close(got, want, dtype, shape=None):
  got = np.asarray(got, np.float64)
  want = np.asarray(want, np.float64)
  if shape is not None:
    want = want.reshape(shape)
  assert got.shape == want.shape, (got.shape, want.shape)
  scale = max(np.abs(want).max(), 1e-30)
  np.testing.assert_allclose(got, want, rtol=RTOL[dtype],
                             atol=RTOL[dtype] * scale)


DTYPES = ["float64", "float32"]
TIMES = {"inf": None, "scalar": 0.7, "array": np.array([[0., 0.3, 2.], [5., 40., 1e3]])}
REGS = {"none": (0., False), "relative": (0.1, False), "absolute": (0.05, True)}


def _dtype_layouts():
  """float64 on every layout; float32 on the traced one (the others under
  -m slow)."""
  return [pytest.param(d, l, marks=[] if d == "float64" or l == "traced"
                       else [pytest.mark.slow])
          for d in DTYPES for l in LAYOUTS]


@pytest.mark.parametrize("dtype,layout", _dtype_layouts())
@pytest.mark.parametrize("times", list(TIMES))
@pytest.mark.parametrize("reg", list(REGS))
@pytest.mark.parametrize("nonzero_fx0", [False, True])
def test_gradient_descent_mse(dtype, layout, times, reg, nonzero_fx0):
  with precision(dtype):
    pb = Problem(layout, dtype)
    diag_reg, absolute = REGS[reg]
    t, lr = TIMES[times], 0.5
    fx0 = pb.fx0 if nonzero_fx0 else 0.
    fx0_test = pb.fx0_test if nonzero_fx0 else 0.
    predict_fn = predict.gradient_descent_mse(
        pb.k, pb.y, lr, diag_reg, absolute, trace_axes=pb.trace_axes)
    got_train, got_test = predict_fn(t, fx0, fx0_test, pb.k_td)
    want_train, want_test = ref.mse(
        pb.full["k"], pb.full["k_td"], pb.np["y"],
        np.broadcast_to(fx0, pb.y_shape), np.broadcast_to(fx0_test,
                                                          pb.test_shape),
        t, lr, diag_reg, absolute)
    lead = () if t is None else np.shape(t)
    assert got_train.dtype == jnp.dtype(dtype)
    assert_close(got_train, want_train, dtype, lead + pb.y_shape)
    assert_close(got_test, want_test, dtype, lead + pb.test_shape)


@pytest.mark.parametrize("times", list(TIMES))
def test_gradient_descent_mse_one_set(times):
  """``fx_train_0=None`` / ``fx_test_0=None`` return the other set only."""
  pb = Problem("traced", "float32")
  t = TIMES[times]
  predict_fn = predict.gradient_descent_mse(pb.k, pb.y, diag_reg=0.1)
  both = predict_fn(t, pb.fx0, pb.fx0_test, pb.k_td)
  train = predict_fn(t, pb.fx0, None, pb.k_td)
  np.testing.assert_allclose(train, both[0], rtol=1e-6)
  test = predict_fn(t, None, pb.fx0_test, pb.k_td)
  want = ref.mse(pb.full["k"], pb.full["k_td"], pb.np["y"], 0. * pb.np["y"],
                 pb.np["fx0_test"], t, 1., 0.1, False)[1]
  assert_close(test, want, "float32", test.shape)
  with pytest.raises(ValueError, match="Both"):
    predict_fn(t, None, None)
  with pytest.raises(ValueError, match="k_test_train"):
    predict_fn(t, 0., 0.)


GETS = ["nngp", "ntk", "ntkgp", ("nngp", "ntk"), ("ntkgp", "nngp"), None]


@pytest.mark.parametrize("dtype,layout", _dtype_layouts())
@pytest.mark.parametrize("get", GETS, ids=str)
@pytest.mark.parametrize("reg", ["relative", "absolute"])
def test_gp_inference(dtype, layout, get, reg):
  with precision(dtype):
    kernels = {"nngp": Problem(layout, dtype, seed=1),
               "ntk": Problem(layout, dtype, seed=2)}
    pb = kernels["ntk"]
    diag_reg, absolute = REGS[reg]
    kernel = collections.namedtuple("Kernel", "nngp ntk")
    k_dd = kernel(kernels["nngp"].k, pb.k)
    k_td = kernel(kernels["nngp"].k_td, pb.k_td)
    k_tt = kernel(kernels["nngp"].k_tt, pb.k_tt)
    y = pb.y
    predict_fn = predict.gp_inference(k_dd, y, diag_reg, absolute,
                                      trace_axes=pb.trace_axes)
    out = predict_fn(get, k_td, k_tt)
    gets = ("nngp", "ntk") if get is None else (
        (get,) if isinstance(get, str) else get)
    if isinstance(get, str):
      out = {get: out}
    else:
      assert out._fields == gets
      out = out._asdict()
    train = {g: kernels[g].kept_2d["k"] for g in kernels}
    test_train = {g: kernels[g].kept_2d["k_td"] for g in kernels}
    test_test = {g: kernels[g].kept_2d["k_tt"] for g in kernels}
    for g in gets:
      k = "nngp" if g == "nngp" else "ntk"
      a = ref.regularized(kernels[k].full["k"], diag_reg, absolute)
      mean = kernels[k].full["k_td"] @ np.linalg.solve(
          a, pb.np["y"].reshape(-1))
      assert_close(out[g].mean, mean, dtype, pb.test_shape)
      cov = ref.gp_cov(g, train, test_train, test_test, diag_reg, absolute)
      kept_test = LAYOUTS[layout][3]
      assert_close(out[g].covariance, ref.zipped(cov, kept_test, kept_test),
                   dtype)
    means = predict_fn(get, k_td)  # no k_test_test: means only
    for g in gets:
      got = means if isinstance(get, str) else getattr(means, g)
      np.testing.assert_allclose(got, out[g].mean, rtol=1e-5, atol=1e-6)


def test_gp_inference_train_set_and_array_kernels():
  pb = Problem("untraced", "float32")
  predict_fn = predict.gp_inference(pb.k, pb.y, trace_axes=())
  out = predict_fn("nngp", None, True)
  np.testing.assert_array_equal(out.mean, pb.y)
  assert out.covariance.shape == pb.k.shape and not np.any(out.covariance)
  with pytest.raises(ValueError, match="nngp"):
    predict_fn("ntk", pb.k_td, pb.k_tt)  # the NTK covariance needs the NNGP
  ntkgp = predict_fn("ntkgp", pb.k_td, pb.k_tt)
  cov = ref.gp_cov("ntkgp", {"ntk": pb.kept_2d["k"]},
                   {"ntk": pb.kept_2d["k_td"]}, {"ntk": pb.kept_2d["k_tt"]},
                   0., False)
  assert_close(ntkgp.covariance, ref.zipped(cov, (N_TEST, O), (N_TEST, O)),
               "float32")


@pytest.mark.parametrize("momentum", [0., 0.9])
@pytest.mark.parametrize("size", [None, 17])
def test_max_learning_rate(momentum, size):
  with precision("float64"):
    pb = Problem("untraced", "float64")
    got = predict.max_learning_rate(pb.k, size, momentum)
    top = np.linalg.eigvalsh(pb.full["k"])[-1]
    want = 2 * (1 + momentum) * (N * O if size is None else size) / top
    np.testing.assert_allclose(got, want, rtol=1e-6)
  pb = Problem("traced", "float32")
  got = predict.max_learning_rate(pb.k, size, momentum)
  want = 2 * (1 + momentum) * (N if size is None else size) / (
      np.linalg.eigvalsh(pb.kept_2d["k"])[-1])
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_shape_errors_name_the_argument():
  pb = Problem("traced", "float32")
  with pytest.raises(ValueError, match=r"k_train_train.*\(5, 5\)"):
    predict.gradient_descent_mse(pb.k[:4, :4], pb.y)
  with pytest.raises(ValueError, match=r"k_train_train.*\(5, 5, 2, 2\)"):
    predict.gradient_descent_mse(pb.k, pb.y, trace_axes=())
  with pytest.raises(ValueError, match="trace_axes"):
    predict.gradient_descent_mse(pb.k, pb.y, trace_axes=(2,))
  predict_fn = predict.gradient_descent_mse(pb.k, pb.y)
  with pytest.raises(ValueError, match=r"k_test_train.*n_test0, 5"):
    predict_fn(1., 0., 0., pb.k_td[:, :4])
  with pytest.raises(ValueError, match="k_train_train"):
    predict.gp_inference(pb.k, pb.y[:4])("nngp", pb.k_td)


def test_non_finite_kernels_are_rejected():
  pb = Problem("traced", "float32")
  bad = pb.k.at[0, 1].set(jnp.nan)
  with pytest.raises(ValueError, match="k_train_train.*non-finite"):
    predict.gradient_descent_mse(bad, pb.y)
  predict_fn = predict.gradient_descent_mse(pb.k, pb.y)
  with pytest.raises(ValueError, match="k_test_train.*non-finite"):
    predict_fn(None, 0., 0., pb.k_td.at[0, 0].set(jnp.inf))


def test_not_psd_warns_and_clips():
  pb = Problem("traced", "float32")
  evals, evecs = np.linalg.eigh(pb.np["k"])
  evals[0] = -0.3 * evals[-1]
  bad = (evecs * evals) @ evecs.T
  with pytest.warns(UserWarning, match="not positive semi-definite"):
    out = predict.gradient_descent_mse(jnp.asarray(bad, jnp.float32), pb.y)(
        1., 0.)
  assert np.all(np.isfinite(out))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    predict.gradient_descent_mse(pb.k, pb.y)(1., 0.)  # round-off is quiet


def test_cholesky_failure_is_an_error():
  pb = Problem("traced", "float32")
  singular = jnp.zeros_like(pb.k)
  predict_fn = predict.gradient_descent_mse(singular, pb.y)
  with pytest.raises(ValueError, match="diag_reg"):
    predict_fn(None, 0., 0., pb.k_td)


def test_under_jit():
  """A first call under jit keeps concrete factors: later eager calls
  work and agree."""
  pb = Problem("traced", "float32")
  predict_fn = predict.gradient_descent_mse(pb.k, pb.y, diag_reg=0.1)
  for t in (1., None):
    jitted = jax.jit(lambda fx0: predict_fn(t, fx0, 0., pb.k_td))(pb.fx0)
    eager = predict_fn(t, pb.fx0, 0., pb.k_td)
    for a, b in zip(jitted, eager):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  gp_fn = predict.gp_inference(pb.k, pb.y, diag_reg=0.1)
  jitted = jax.jit(lambda k: gp_fn("nngp", k))(pb.k_td)
  np.testing.assert_allclose(jitted, gp_fn("nngp", pb.k_td), rtol=1e-5)
