"""The route rule: the dense route is refused past the budget, the
matrix-free one when it alone does not fit, and otherwise the cheaper
priced (or, on a close call, timed) route wins; the iteration bounds are
not below what the solvers take on the spectrum they assume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.sparse.linalg import lobpcg_standard

import autontk
from autontk import route
from autontk.route import choose_route


@pytest.fixture(scope="module")
def op():
  rs = np.random.RandomState(0)
  p = {"w": jnp.asarray(rs.randn(4, 8), jnp.float32),
       "v": jnp.asarray(rs.randn(8, 2), jnp.float32)}
  f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
  return autontk.ntk_operator(f, jnp.asarray(rs.randn(48, 4), jnp.float32),
                              p, batch_size=16)


def test_dense_refused_past_the_budget(op):
  report = choose_route(op, "solve", memory_budget=48 * 48 * 4)
  assert report.route == "matrix_free" and not report.dense_fits
  assert "memory budget" in report.reason
  assert "does not fit" in str(report)


def test_matrix_free_refused_when_it_alone_does_not_fit(op):
  """A budget the dense kernel fits but the product program does not."""
  free = choose_route(op, "solve", shift=0.1, memory_budget=2 ** 30)
  budget = free.dense_bytes
  assert free.matrix_free_bytes > budget
  report = choose_route(op, "solve", shift=0.1, memory_budget=budget)
  assert report.route == "dense" and report.dense_fits
  assert "matrix-free" in report.reason and "memory budget" in report.reason


def test_neither_fits_is_said(op):
  report = choose_route(op, "solve", memory_budget=64)
  assert report.route == "matrix_free" and "neither fits" in report.reason


@pytest.mark.parametrize("rhs", [1, 3])
@pytest.mark.parametrize("question", ["solve", "times", "eigsh"])
def test_cheaper_route_wins(op, question, rhs):
  report = choose_route(op, question, rhs=rhs, k=2, shift=0.1,
                        memory_budget=2 ** 30)
  assert report.dense_fits and report.products > 0 and report.iterations > 0
  cheaper = ("dense" if report.dense_seconds <= report.matrix_free_seconds
             else "matrix_free")
  assert report.route == cheaper
  assert report.dense_seconds > 0 and report.matrix_free_seconds > 0


def test_bad_question(op):
  with pytest.raises(ValueError, match="question"):
    choose_route(op, "invert")
  with pytest.raises(ValueError, match="tol"):
    choose_route(op, tol=2.0)


def test_eigsh_that_goes_dense_is_priced_dense(op):
  """k with 5k >= M: eigsh computes the dense kernel itself."""
  report = choose_route(op, "eigsh", k=10, memory_budget=2 ** 30)
  assert report.route == "dense" and report.iterations == 0
  assert report.matrix_free_seconds == report.dense_seconds


def test_more_columns_cost_more(op):
  one = choose_route(op, "solve", rhs=1, shift=0.1, memory_budget=2 ** 30,
                     measure=False)
  many = choose_route(op, "solve", rhs=8, shift=0.1, memory_budget=2 ** 30,
                      measure=False)
  assert many.matrix_free_seconds > one.matrix_free_seconds
  assert many.dense_seconds >= one.dense_seconds


def test_close_calls_are_timed(op):
  """``measure=True`` times both routes' programs and decides on the
  timings; ``False`` never times; a route past the budget is not timed."""
  timed = choose_route(op, "solve", shift=0.1, memory_budget=2 ** 30,
                       measure=True)
  assert timed.timed and "timed" in timed.reason
  cheaper = ("dense" if timed.dense_seconds <= timed.matrix_free_seconds
             else "matrix_free")
  assert timed.route == cheaper and timed.matrix_free_seconds > 0
  priced = choose_route(op, "solve", shift=0.1, memory_budget=2 ** 30,
                        measure=False)
  assert not priced.timed and "timed" not in priced.reason
  assert priced.plan == timed.plan
  refused = choose_route(op, "solve", memory_budget=48 * 48 * 4,
                         measure=True)
  assert not refused.timed and refused.route == "matrix_free"


def test_only_close_calls_are_timed_by_default():
  assert route._confirm(None, 1.0, 0.6, True)
  assert not route._confirm(None, 1.0, 0.4, True)
  assert not route._confirm(None, 1.0, 1.0, False)
  assert route._confirm(True, 1.0, 100.0, True)
  assert not route._confirm(False, 1.0, 1.0, True)


def _power_law(m, alpha=route.SPECTRUM_DECAY):
  q, _ = np.linalg.qr(np.random.RandomState(0).randn(m, m))
  lam = np.arange(1, m + 1, dtype=np.float64) ** -alpha
  return autontk.MatrixOperator(jnp.asarray((q * lam) @ q.T)), lam


@pytest.mark.parametrize("k", [1, 5, 10])
def test_lobpcg_estimate_covers_the_solver(k):
  """On the spectrum it assumes, LOBPCG (as eigsh calls it) takes the
  estimated iterations within a factor of 2 (an estimate of the rate, not a
  bound: the start from random vectors costs a few more at small k), in
  float64."""
  with jax.enable_x64(True):
    m, tol = 200, 1e-6
    op, lam = _power_law(m)
    x0 = jax.random.normal(jax.random.key(0), (m, k), jnp.float64)
    w, _, it = lobpcg_standard(op.matmat, x0, m=500, tol=tol / (20 * m))
    np.testing.assert_allclose(np.sort(np.asarray(w))[::-1], lam[:k],
                               rtol=1e-6)
    estimate = route.lobpcg_iterations(k, tol)
    assert estimate / 2 <= int(it) <= 2 * estimate


@pytest.mark.parametrize("ratio", [1e-2, 1e-3])
def test_cg_estimate_covers_the_solver(ratio):
  """Nyström-preconditioned CG on the assumed spectrum with a ridge of
  ``ratio`` times the mean eigenvalue converges within the bound, the
  priced (typical) count within a factor of 4 of what it takes, and the
  system is solved (float64 reference)."""
  with jax.enable_x64(True):
    m, tol = 300, 1e-6
    op, lam = _power_law(m)
    a = np.asarray(op.to_dense())
    shift = ratio * lam.sum() / m
    b = np.random.RandomState(1).randn(m)
    x, info = autontk.solvers.solve(op, jnp.asarray(b), shift=shift, tol=tol,
                                    progress=False, return_info=True)
    residual = a @ np.asarray(x) + shift * np.asarray(x) - b
    assert np.linalg.norm(residual) <= 10 * tol * np.linalg.norm(b)
    bound = route.cg_bound(m, tol, shift, lam.sum(), info.rank)
    typical = route.cg_iterations(m, tol, shift, lam.sum(), info.rank)
    assert info.iterations <= bound
    assert typical / 4 <= info.iterations <= 4 * typical, (info, typical)


def test_diagnostics_take_the_same_rule():
  """The FLOP-priced diagnostics rule is :func:`route.decide`: refusal past
  the budget, forced routes, the cheaper price."""
  q = route.Question(dense_flops=1e9 / 3, columns=60)
  given = route.Pricing(1000, 2e6, 0.0, True)
  formed = route.Pricing(1000, 2e6, 1e12, False)
  assert route.choose(q, given)[0] == "matrix-free"
  assert route.choose(q, formed, memory_budget=2 ** 30)[0] == "matrix-free"
  assert route.choose(route.Question(1.0, 60), given)[0] == "dense"
  path, reason = route.choose(q, route.Pricing(10 ** 5, 1.0, 0.0, False))
  assert path == "matrix-free" and "memory budget" in reason
  assert route.choose(q, given, "dense") == ("dense",
                                             "forced (route='dense')")
  with pytest.raises(ValueError, match="route"):
    route.choose(q, given, "fastest")
