"""Kernel diagnostics against their dense values, computed here with NumPy.

Synthetic PSD kernels with a fast-decaying spectrum (a large top eigenvalue,
then a power law, as NTKs have) test each estimator: exact values on the
dense route, eigenvalues to 1e-3 and the randomised estimates within their
error bars on >= 95 % of 40 seeds and within 2 % at the default probe count.
A small MLP with groups tests the model-level entry points against
tests/reference.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
import reference
import autontk
from autontk import diagnostics as D

M = 150
SEEDS = range(40)


class DenseOperator(autontk.MatrixOperator):
  """A dense-backed kernel operator (float32, as JAX's default) that counts
  its products."""

  def __init__(self, k):
    super().__init__(jnp.asarray(k, jnp.float32))
    self.products = 0

  def matmat(self, v):
    self.products += 1
    return super().matmat(v)


def synthetic(seed: int, m: int = M, decay: float = 1.5) -> np.ndarray:
  rng = np.random.default_rng(1000 + seed)
  q, _ = np.linalg.qr(rng.standard_normal((m, m)))
  lam = np.arange(1, m + 1) ** -decay
  lam[0] = 20.0  # the constant mode of an NTK
  return (q * lam) @ q.T


@pytest.fixture(scope="module")
def kernel():
  return synthetic(0)


@pytest.fixture(scope="module")
def labels():
  rng = np.random.default_rng(7)
  return np.eye(4)[rng.integers(0, 4, M)]


def _centered(k):
  h = np.eye(len(k)) - 1.0 / len(k)
  return h @ k @ h


def _entropy_rank(k):
  lam = np.clip(np.linalg.eigvalsh(k), 0, None)
  p = lam[lam > 0] / lam.sum()
  return np.exp(-np.sum(p * np.log(p)))


def _alignment(k, y):
  kc, yy = _centered(k), _centered(y @ y.T)
  return np.sum(kc * yy) / np.linalg.norm(kc) / np.linalg.norm(yy)


TRUTH = {
    "top": lambda k, y, k2: np.linalg.eigvalsh(k)[::-1][:10],
    "bottom": lambda k, y, k2: np.linalg.eigvalsh(k)[2::-1],
    "cond": lambda k, y, k2: np.linalg.cond(k),
    "trace": lambda k, y, k2: np.trace(k),
    "fro": lambda k, y, k2: np.sqrt(np.sum(k ** 2)),
    "ratio": lambda k, y, k2: np.trace(k) ** 2 / np.sum(k ** 2),
    "entropy": lambda k, y, k2: _entropy_rank(k),
    "align": lambda k, y, k2: _alignment(k, y),
    "dist": lambda k, y, k2: 1 - np.sum(k * k2) / np.linalg.norm(k) /
    np.linalg.norm(k2),
}
"""Every diagnostic's value, computed independently with NumPy."""


def truth(k, y=None, k2=None, names=None):
  names = names or [n for n in TRUTH if (n != "align" or y is not None) and (
      n != "dist" or k2 is not None)]
  return {n: TRUTH[n](k, y, k2) for n in names}


def moved(k, seed=0, size=0.1):
  """A nearby kernel: ``k`` with its top eigenvectors rotated."""
  rng = np.random.default_rng(seed)
  a = rng.standard_normal(k.shape) * size / np.sqrt(len(k))
  r = np.linalg.qr(np.eye(len(k)) + (a - a.T) / 2)[0]
  return r @ k @ r.T


def test_dense_route_is_exact(kernel, labels):
  t = truth(kernel, labels, moved(kernel))
  est = {
      "top": D.eigvals(kernel, 10), "cond": D.condition_number(kernel),
      "bottom": D.eigvals(kernel, 3, which="smallest"),
      "trace": D.trace(kernel), "fro": D.frobenius_norm(kernel),
      "ratio": D.effective_rank(kernel),
      "entropy": D.effective_rank(kernel, kind="entropy", route="dense"),
      "align": D.alignment(kernel, labels),
      "dist": D.kernel_distance(kernel, moved(kernel))}
  for name, e in est.items():
    assert e.exact and e.route == "dense", (name, e)
    np.testing.assert_allclose(e.value, t[name], rtol=1e-6, err_msg=name)


def test_top_eigenvalues_matrix_free(kernel):
  op = DenseOperator(kernel)
  e = D.eigvals(op, 10, route="matrix-free")
  t = truth(kernel)["top"]
  assert e.route == "matrix-free" and e.error_kind == "bound"
  np.testing.assert_allclose(e.value, t, rtol=1e-3)
  assert np.all(np.abs(e.value - t) <= e.error + 1e-9 * t[0])


def test_bottom_eigenvalues_and_condition_bounds(kernel):
  t = truth(kernel)
  low = D.eigvals(DenseOperator(kernel), 3, which="smallest",
                  route="matrix-free")
  assert np.all(np.abs(low.value - t["bottom"]) <= low.error * (1 + 1e-6))
  c = D.condition_number(DenseOperator(kernel), route="matrix-free")
  lo, hi = c.interval()
  assert lo <= t["cond"] <= hi


def test_trace_is_exact_from_the_operator(kernel):
  op = DenseOperator(kernel)
  e = D.trace(op)
  assert e.exact and e.method == "op.trace" and op.products == 0
  assert abs(e.value - np.trace(kernel)) <= 1e-6 * abs(np.trace(kernel))


ESTIMATORS = {
    "fro": lambda k, y, k2, s, **o: D.frobenius_norm(k, seed=s, **o),
    "ratio": lambda k, y, k2, s, **o: D.effective_rank(k, seed=s, **o),
    "entropy": lambda k, y, k2, s, **o: D.effective_rank(
        k, kind="entropy", seed=s, **o),
    "align": lambda k, y, k2, s, **o: D.alignment(k, y, seed=s, **o),
    "dist": lambda k, y, k2, s, **o: D.kernel_distance(k, k2, seed=s, **o),
}


# The Frobenius estimators run by default; the others' repeated seeds are
# heavy.
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=[] if n in ("fro", "ratio") else [pytest.mark.slow])
    for n in sorted(ESTIMATORS)])
def test_estimates_within_error_bars_and_two_percent(name, labels):
  inside, worst = 0, 0.0
  for seed in SEEDS:
    k = synthetic(seed)
    k2 = moved(k, seed)
    t = TRUTH[name](k, labels, k2)
    e = ESTIMATORS[name](DenseOperator(k), labels, DenseOperator(k2), seed,
                         route="matrix-free")
    assert e.error_kind == "stderr" and e.error > 0
    lo, hi = e.interval()
    inside += lo <= t <= hi
    worst = max(worst, abs(e.value - t) / abs(t))
  assert inside >= 0.95 * len(SEEDS), (name, inside)
  assert worst <= 0.02, (name, worst)


def test_auto_route_prices_both(kernel):
  e = D.eigvals(kernel, 10)
  assert e.route == "dense" and "FLOPs" in e.reason
  big = D.eigvals(DenseOperator(kernel), 10, memory_budget=1e3)
  assert big.route == "matrix-free" and "memory budget" in big.reason
  assert D.frobenius_norm(DenseOperator(kernel),
                          memory_budget=1e3).route == "matrix-free"


def test_a_dict_is_one_kernel_per_group(kernel):
  out = D.trace({"a": kernel, "b": 2 * kernel})
  assert set(out) == {"a", "b"}
  assert out["b"].value == pytest.approx(2 * out["a"].value)
  shared = D.kernels(kernel)
  assert set(shared) == {None}
  assert isinstance(D.trace(shared), D.Estimate)


def test_untraced_kernel_layout():
  rng = np.random.default_rng(0)
  j = rng.standard_normal((3, 2, 5))  # (N, O, P)
  k4 = np.einsum("nop,mqp->nmoq", j, j)
  flat = j.reshape(6, 5) @ j.reshape(6, 5).T
  np.testing.assert_allclose(D.eigvals(k4, 6).value,
                             np.linalg.eigvalsh(flat)[::-1], atol=1e-10)


def test_errors():
  with pytest.raises(ValueError, match="which"):
    D.eigvals(np.eye(3), 1, which="middle")
  with pytest.raises(ValueError, match="route"):
    D.eigvals(np.eye(3), 1, route="fast")
  with pytest.raises(ValueError, match="x= and params="):
    D.trace(lambda p, x: x)
  with pytest.raises(ValueError, match="apply to a network"):
    D.trace(np.eye(3), groups="layer")
  with pytest.raises(ValueError, match="one output array"):
    D.trace(lambda p, x: (x @ p, x @ p), x=np.ones((2, 3)),
            params=np.ones((3, 2)))
  with pytest.raises(ValueError, match="kernel_b"):
    D.kernel_distance(np.eye(3))
  with pytest.raises(ValueError, match="targets"):
    D.alignment(np.eye(3), np.ones(4))
  with pytest.raises(ValueError, match="constant"):
    D.alignment(np.eye(3), np.ones(3))


def test_repr_states_the_error():
  e = D.Estimate(1.5, 0.01, "stderr", "Hutch++", 40, "matrix-free", "why")
  assert "± 0.01 (stderr)" in repr(e) and "matrix-free: why" in repr(e)
  assert "(exact)" in repr(D.trace(np.eye(2)))
  with pytest.raises(ValueError):
    D.Estimate(1.0, error_kind="guess")


# Model level: a small MLP, one group per layer.

@pytest.fixture(scope="module")
def mlp():
  case = models.mlp(n1=6, d=3, widths=(4, 3))
  return case.f, case.params, case.x1


def _layer_reference(f, params, x, i):
  """The NTK with respect to layer ``i`` only, by the reference Jacobian."""
  def g(layer, x):
    return f([layer if j == i else p for j, p in enumerate(params)], x)
  return reference.reference_ntk(g, params[i], x, None)


def test_model_level_per_group_against_reference(mlp):
  f, params, x = mlp
  full = reference.reference_ntk(f, params, x, None)
  per = {str(i): _layer_reference(f, params, x, i)
         for i in range(len(params))}
  kw = dict(x=x, params=params, route="dense")
  traces = D.trace(f, groups="layer", **kw)
  assert set(traces) == set(per)
  for g, k in per.items():
    assert traces[g].value == pytest.approx(np.trace(k), rel=1e-5)
  total = D.trace(f, **kw).value
  assert sum(t.value for t in traces.values()) == pytest.approx(total,
                                                                rel=1e-5)
  assert total == pytest.approx(np.trace(full), rel=1e-5)
  top = D.eigvals(f, 3, groups="layer", **kw)
  for g, k in per.items():
    np.testing.assert_allclose(top[g].value, np.linalg.eigvalsh(k)[::-1][:3],
                               rtol=1e-4)
  rank = D.effective_rank(f, **kw).value
  assert rank == pytest.approx(truth(full)["ratio"], rel=1e-4)


def test_model_level_distance_between_checkpoints(mlp):
  f, params, x = mlp
  moved_params = jax.tree.map(lambda p: p * 1.3, params)
  d = D.kernel_distance(f, x=x, params=params, params_b=moved_params,
                        groups="layer", route="dense")
  for i in range(len(params)):
    a = _layer_reference(f, params, x, i)
    b = _layer_reference(f, moved_params, x, i)
    assert d[str(i)].value == pytest.approx(truth(a, k2=b)["dist"],
                                            rel=1e-4, abs=1e-7)


def test_report_shares_kernels_and_plots(mlp, tmp_path):
  f, params, x = mlp
  y = np.eye(3)[np.arange(x.shape[0]) % 3]
  moved_params = jax.tree.map(lambda p: p * 1.3, params)
  r = D.report(f, x, params, y=y, params_b=moved_params, groups="layer",
               k=4, route="dense")
  full = reference.reference_ntk(f, params, x, None)
  t = truth(full, y)
  assert r.get("alignment").value == pytest.approx(t["align"], rel=1e-4)
  np.testing.assert_allclose(r.spectrum.value, t["top"][:4], rtol=1e-4)
  assert sum(r.get("trace", g).value for g in ("0", "1")) == pytest.approx(
      r.get("trace").value, rel=1e-5)
  text = str(r)
  assert "kernel distance" in text and "top eigenvalues" in text
  pytest.importorskip("matplotlib").use("Agg")
  r.plot(str(tmp_path / "diagnostics.png"))
  assert (tmp_path / "diagnostics.png").stat().st_size > 0


def test_docstring_examples():
  import doctest
  import importlib
  for name in ("estimate", "frobenius", "report", "sources",
               "spectrum"):
    module = importlib.import_module(f"autontk.diagnostics.{name}")
    assert doctest.testmod(module).failed == 0, name


def test_model_level_wrt_selects_parameters(mlp):
  f, params, x = mlp
  head = D.trace(f, x=x, params=params, wrt="1/*", route="dense")
  assert head.value == pytest.approx(
      np.trace(_layer_reference(f, params, x, 1)), rel=1e-5)
  weights = D.trace(f, x=x, params=params, wrt="*/w", groups="layer",
                    route="dense")
  assert set(weights) == {"0", "1"}
  assert weights["1"].value < head.value


@pytest.fixture(scope="module")
def wide_mlp():
  case = models.mlp(n1=40, d=3, widths=(6, 2), seed=3)
  return case.f, case.params, case.x1


@pytest.mark.slow
def test_model_level_matrix_free_against_reference(wide_mlp):
  f, params, x = wide_mlp
  moved_params = jax.tree.map(lambda p: p * 1.1, params)
  a = D.kernels(f, x=x, params=params, groups="layer")
  b = D.kernels(f, x=x, params=moved_params, groups="layer")
  traces = D.trace(a)
  fro = D.frobenius_norm(a, route="matrix-free")
  dist = D.kernel_distance(a, b, route="matrix-free")
  for i in range(len(params)):
    g = str(i)
    k = _layer_reference(f, params, x, i)
    k2 = _layer_reference(f, moved_params, x, i)
    assert traces[g].route == "matrix-free" and traces[g].exact
    assert traces[g].value == pytest.approx(np.trace(k), rel=1e-5)
    for e, t in ((fro[g], TRUTH["fro"](k, 0, 0)),
                 (dist[g], TRUTH["dist"](k, 0, k2))):
      lo, hi = e.interval()
      assert lo <= t <= hi and abs(e.value - t) <= 0.02 * t, (g, e, t)
  whole = D.kernels(f, x=x, params=params)[None]
  top = D.eigvals(whole, 3, route="matrix-free")
  assert top.method == "LOBPCG"
  full = reference.reference_ntk(f, params, x, None)
  np.testing.assert_allclose(top.value, TRUTH["top"](full, 0, 0)[:3],
                             rtol=1e-3)
  assert sum(t.value for t in traces.values()) == pytest.approx(
      D.trace(whole).value, rel=1e-5)


def test_an_ntk_fn_brings_its_options(mlp):
  f, params, x = mlp
  ntk = autontk.ntk_fn(f, groups="layer", vmap_axes=0)
  dense = D.eigvals(ntk, 3, x=x, params=params, route="dense")
  traces = D.trace(ntk, x=x, params=params)
  for i in range(len(params)):
    k = _layer_reference(f, params, x, i)
    np.testing.assert_allclose(dense[str(i)].value,
                               TRUTH["top"](k, 0, 0)[:3], rtol=1e-4)
    assert traces[str(i)].route == "matrix-free"
    assert traces[str(i)].value == pytest.approx(np.trace(k), rel=1e-5)
  with pytest.raises(ValueError, match="brings its own"):
    D.trace(ntk, x=x, params=params, groups="top")
