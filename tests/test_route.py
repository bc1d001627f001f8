"""choose_route: the dense route is refused past the budget, and otherwise
the cheaper predicted route wins."""

import jax.numpy as jnp
import numpy as np
import pytest

import autontk
from autontk.route import choose_route


@pytest.fixture(scope="module")
def op():
  rs = np.random.RandomState(0)
  p = {"w": jnp.asarray(rs.randn(4, 8), jnp.float32),
       "v": jnp.asarray(rs.randn(8, 2), jnp.float32)}
  f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
  return autontk.ntk_operator(f, jnp.asarray(rs.randn(16, 4), jnp.float32),
                              p, batch_size=8)


def test_dense_refused_past_the_budget(op):
  report = choose_route(op, "solve", memory_budget=16 * 16 * 4)
  assert report.route == "matrix_free" and not report.dense_fits
  assert "over the budget" in report.reason
  assert "does not fit" in str(report)


@pytest.mark.parametrize("question", ["solve", "times", "eigsh"])
def test_cheaper_route_wins(op, question):
  report = choose_route(op, question, rhs=2, memory_budget=2 ** 30)
  assert report.dense_fits and report.products > 0
  cheaper = ("dense" if report.dense_seconds <= report.matrix_free_seconds
             else "matrix_free")
  assert report.route == cheaper
  assert report.dense_seconds > 0 and report.matrix_free_seconds > 0


def test_bad_question(op):
  with pytest.raises(ValueError, match="question"):
    choose_route(op, "invert")
  with pytest.raises(ValueError, match="tol"):
    choose_route(op, tol=2.0)
