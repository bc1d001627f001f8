"""ntk_operator and MatrixOperator against the independent reference kernel.

Each case builds one operator (batches that do not divide N, so padding is
exercised) and compares its products, diagonal, trace, dense matrix and
test-train products with the naive-Jacobian kernel of ``reference.py``, in
float64.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autontk
import models
import reference
from autontk.pseudo import PseudoOutputs

JC = "jacobian_contraction"  # diag/to_dense without the planner's compiles


def _f64(tree):
  return jax.tree.map(
      lambda v: jnp.asarray(v, jnp.float64)
      if jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating) else v, tree)


def _matrix(kernel, trace_axes, out_ndim):
  """The reference kernel leaf as an (M, M') matrix: batch axis 0, plain
  axes pairwise after it."""
  kept = [a for a in range(out_ndim)
          if a not in {t % out_ndim for t in trace_axes}]
  rows = [2 * i for i in range(len(kept))]
  k = np.transpose(kernel, rows + [r + 1 for r in rows])
  n1 = k.shape[0]
  return k.reshape(n1 * int(np.prod(k.shape[1:len(kept)])), -1)


def _check(op, kernel, cross=None, cross_kernel=None):
  m = op.shape[0]
  assert kernel.shape == (m, m)
  v = np.random.RandomState(0).randn(m, 3)
  np.testing.assert_allclose(op.matmat(v), kernel @ v, rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(op.matmat(v[:, 0]), kernel @ v[:, 0],
                             rtol=1e-9, atol=1e-9)
  np.testing.assert_allclose(op.diag(), np.diag(kernel), rtol=1e-9,
                             atol=1e-9)
  np.testing.assert_allclose(op.trace(), np.trace(kernel), rtol=1e-9)
  np.testing.assert_allclose(op.to_dense(), kernel, rtol=1e-9, atol=1e-9)
  if cross is not None:
    assert cross.shape == cross_kernel.shape
    np.testing.assert_allclose(cross.matmat(v), cross_kernel @ v, rtol=1e-9,
                               atol=1e-9)
    np.testing.assert_allclose(cross.to_dense(), cross_kernel, rtol=1e-9,
                               atol=1e-9)


CASES = {
    "mlp": lambda: models.mlp(n1=7, n2=4),
    "cnn": lambda: models.cnn(),
    "sequence": lambda: models.sequence_mlp(n1=5, n2=2),
    "pytree": lambda: models.pytree_io(),
}


def _params():
  """Every case traced, both product strategies; untraced for the cheap
  ones (the others: slow)."""
  out = []
  for name in sorted(CASES):
    for trace_axes, tid in (((-1,), "traced"), ((), "full")):
      for products in ("vector", "jacobian"):
        marks = ([pytest.mark.slow] if name == "pytree" or (
            tid == "full" and name == "cnn") else [])
        out.append(pytest.param(name, trace_axes, products,
                                id=f"{name}-{tid}-{products}", marks=marks))
  return out


@pytest.mark.parametrize("name,trace_axes,products", _params())
def test_operator_matches_reference(name, trace_axes, products):
  case = CASES[name]()
  with jax.enable_x64(True):
    f, p, x, x2 = case.f, _f64(case.params), _f64(case.x1), _f64(case.x2)
    ops = autontk.ntk_operator(f, x, p, trace_axes=trace_axes, batch_size=2,
                               implementation=JC, products=products)
    ref = reference.reference_ntk(f, p, x, None, trace_axes=trace_axes)
    ref_x = reference.reference_ntk(f, p, x2, x, trace_axes=trace_axes)
    outs = jax.tree.leaves(f(p, x))
    for op, k, kx, o in zip(jax.tree.leaves(ops), jax.tree.leaves(ref),
                            jax.tree.leaves(ref_x), outs):
      assert isinstance(op, autontk.NtkOperator)
      _check(op, _matrix(k, trace_axes, o.ndim), op.cross(x2),
             _matrix(kx, trace_axes, o.ndim))


@pytest.mark.parametrize("products", ["vector", "jacobian"])
def test_kwargs_wrt_and_pseudo(products):
  case = models.dropout_kwargs()
  kw = {"shift": 0.3, "train": False}
  with jax.enable_x64(True):
    f, p, x = case.f, _f64(case.params), _f64(case.x1)
    x = jnp.concatenate([x, x[::-1] * 0.5, x[:1]])
    op = autontk.ntk_operator(f, x, p, trace_axes=(), wrt="v", batch_size=2,
                              implementation=JC, products=products, **kw)
    g = lambda v, xx, **k: f({"w": p["w"], "v": v}, xx, **k)
    k = reference.reference_ntk(g, p["v"], x, None, trace_axes=(),
                                kwargs1=kw)
    _check(op, _matrix(k, (), 2))
    op = autontk.ntk_operator(f, x, p, pseudo_axes=(-1,), batch_size=3,
                              implementation=JC, products=products, **kw)
    k = reference.reference_ntk(PseudoOutputs(f, (-1,)), p, x, None,
                                kwargs1=kw)
    _check(op, k)


@pytest.mark.parametrize("products", ["vector", "jacobian"])
def test_batched_kwarg_with_vmap_axes(products):
  def f(p, x, scale):
    return jnp.tanh(x @ p) * scale[:, None]

  with jax.enable_x64(True):
    x = jnp.asarray(np.random.RandomState(1).randn(5, 3))
    scale = jnp.arange(1., 6.)
    p = jnp.asarray(np.random.RandomState(2).randn(3, 2))
    op = autontk.ntk_operator(f, x, p, vmap_axes=(0, 0, {"scale": 0}),
                              batch_size=2, implementation=JC, scale=scale,
                              products=products)
    k = reference.reference_ntk(f, p, x, None, kwargs1={"scale": scale})
    _check(op, k)


@pytest.mark.parametrize("products", ["vector", "jacobian"])
def test_batch_axis_last_and_plain_axes(products):
  """Inputs batched on their last axis, a ``(O, N, 2)`` output batched on
  axis 1 with one plain and one traced axis: both strategies read the
  layout alike."""
  def f(p, x):
    h = jnp.tanh(p["a"] @ x)                      # (3, N)
    return jnp.stack([h * p["b"][:, None], h ** 2], -1)  # (3, N, 2)

  with jax.enable_x64(True):
    rs = np.random.RandomState(4)
    p = {"a": jnp.asarray(rs.randn(3, 4)), "b": jnp.asarray(rs.randn(3))}
    x = jnp.asarray(rs.randn(4, 7))
    op = autontk.ntk_operator(f, x, p, vmap_axes=(-1, 1, {}),
                              trace_axes=(-1,), batch_size=3, implementation=JC,
                              products=products)
    g = lambda p, xt: jnp.moveaxis(f(p, xt.T), 1, 0)  # batch axes first
    k = reference.reference_ntk(g, p, x.T, None, trace_axes=(-1,))
    assert op.shape == (21, 21)
    _check(op, _matrix(k, (-1,), 3))


def test_auto_products_take_the_jacobian_for_many_columns():
  """``products="auto"``: the vector passes for one column, per-example
  Jacobians for many columns on a convolution (forward FLOPs far above its
  parameter count), the vector passes for an untraced MLP (its Jacobian
  has a row per output)."""
  from autontk.operator import products as P
  case = models.cnn()
  op = autontk.ntk_operator(case.f, case.x1, case.params, batch_size=2)
  prod, dyn = op._product, op._setup.dynamic  # noqa: SLF001
  assert P.choose_strategy(prod, dyn, [], 1) == "vector"
  assert P.choose_strategy(prod, dyn, [], 16) == "jacobian"
  case = models.mlp(n1=7, n2=4)
  op = autontk.ntk_operator(case.f, case.x1, case.params, trace_axes=(),
                            batch_size=2)
  prod, dyn = op._product, op._setup.dynamic  # noqa: SLF001
  assert P.choose_strategy(prod, dyn, [], 16) == "vector"
  with pytest.raises(ValueError, match="products"):
    autontk.ntk_operator(case.f, case.x1, case.params, products="dense")


def test_auto_batch_size_fits_the_budget():
  case = models.mlp(n1=40)
  op = autontk.ntk_operator(case.f, case.x1, case.params,
                            memory_budget=2 ** 30)
  assert op.batch_size == 40  # the whole batch fits a GiB
  small = autontk.ntk_operator(case.f, case.x1, case.params,
                               memory_budget=5_000)
  assert 1 <= small.batch_size < 40
  v = jnp.ones((40, 2))
  np.testing.assert_allclose(small.matmat(v), op.matmat(v), rtol=1e-4)
  with pytest.raises(ValueError, match="memory_budget"):
    autontk.ntk_operator(case.f, case.x1, case.params, memory_budget=10)


def test_products_are_traceable():
  case = models.mlp(n1=5)
  op = autontk.ntk_operator(case.f, case.x1, case.params, batch_size=2)
  v = jnp.ones((5, 2))
  want = op.matmat(v)
  np.testing.assert_allclose(jax.jit(op.matmat)(v), want, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(op.matmat, 1, 1)(v), want, rtol=1e-6)


def test_errors():
  case = models.mlp(n1=4)
  op = autontk.ntk_operator(case.f, case.x1, case.params, batch_size=2)
  with pytest.raises(ValueError, match=r"shape \(4,\) or \(4, R\)"):
    op.matmat(jnp.ones(3))
  with pytest.raises(ValueError, match="batch axis"):
    autontk.ntk_operator(case.f, case.x1, case.params, trace_axes=(0, 1))
  with pytest.raises(ValueError, match="batch_size"):
    autontk.ntk_operator(case.f, case.x1, case.params, batch_size=0)
  with pytest.raises(ValueError, match="rng"):
    autontk.ntk_operator(case.f, case.x1, case.params,
                         rng=jax.random.PRNGKey(0))


def test_matrix_operator():
  k = np.random.RandomState(0).randn(3, 3, 2, 2)
  op = autontk.MatrixOperator.from_kernel(k)
  dense = k.transpose(0, 2, 1, 3).reshape(6, 6)
  np.testing.assert_allclose(op.to_dense(), dense)
  v = np.arange(6.)
  np.testing.assert_allclose(op.matmat(v), dense @ v, rtol=1e-5)
  np.testing.assert_allclose(op.diag(), np.diag(dense))
  np.testing.assert_allclose(op.trace(), np.trace(dense), rtol=1e-6)
  with pytest.raises(ValueError, match="square"):
    autontk.MatrixOperator(np.ones((2, 3)))
  with pytest.raises(ValueError, match="each axis twice"):
    autontk.MatrixOperator.from_kernel(np.ones((3, 3, 2)))
  with pytest.raises(ValueError, match="operand"):
    op.matmat(np.ones((5, 1)))


@pytest.mark.subprocess
def test_batches_spread_over_two_devices():
  """Two simulated CPU devices give the one-device products (both
  strategies), and the route chooser times them."""
  script = textwrap.dedent("""
      import json, jax, jax.numpy as jnp, numpy as np, autontk
      assert jax.device_count() == 2
      k = jax.random.split(jax.random.PRNGKey(0), 3)
      p = jax.random.normal(k[0], (3, 4))
      f = lambda p, x: jnp.sin(x @ p)
      x = jax.random.normal(k[1], (7, 3))
      v = jax.random.normal(k[2], (28, 2))
      two = autontk.ntk_operator(f, x, p, trace_axes=(), batch_size=2)
      one = autontk.ntk_operator(f, x, p, trace_axes=(), batch_size=2,
                                 devices=jax.devices()[:1])
      jac = autontk.ntk_operator(f, x, p, trace_axes=(), batch_size=2,
                                 products="jacobian")
      timed = autontk.route.choose_route(two, "solve", shift=0.1,
                                         memory_budget=2 ** 30,
                                         measure=True).timed
      print(json.dumps([[float(timed)], np.asarray(jac.matmat(v)).tolist(),
                        np.asarray(two.matmat(v)).tolist(),
                        np.asarray(one.matmat(v)).tolist(),
                        np.asarray(one.to_dense() @ v).tolist(),
                        np.asarray(two.diag()).tolist(),
                        np.diag(np.asarray(one.to_dense())).tolist()]))
      """)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root,
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", script], env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  timed, jac, two, one, dense, diag, dense_diag = (
      np.array(a) for a in json.loads(out.stdout.splitlines()[-1]))
  assert timed[0] == 1.0  # the route's timing runs on a sharded operator
  np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jac, one, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(two, dense, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(diag, dense_diag, rtol=1e-4, atol=1e-6)
