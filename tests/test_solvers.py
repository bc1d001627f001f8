"""autontk.solvers against NumPy/SciPy in float64.

Most cases use a dense PSD matrix with an NTK-like spectrum (a few large
eigenvalues, a fast-decaying tail); one matrix-free NTK operator checks that
every solver runs on products alone.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import autontk
from autontk import solvers
from autontk.solvers import lanczos

M = 120


def _spectrum_matrix(m=M, decay=0.85, seed=0):
  """``U diag(λ) Uᵀ`` with ``λ_i = decay^i`` (condition ~1e8 at M=120)."""
  rs = np.random.RandomState(seed)
  u, _ = np.linalg.qr(rs.randn(m, m))
  return (u * decay ** np.arange(m)) @ u.T


@pytest.fixture(scope="module")
def dense():
  with jax.enable_x64(True):
    k = _spectrum_matrix()
    yield k, autontk.MatrixOperator(jnp.asarray(k))


@pytest.fixture(scope="module")
def ntk():
  """A matrix-free NTK of an MLP (N=40, untraced over O=2 -> M=80)."""
  with jax.enable_x64(True):
    rs = np.random.RandomState(3)
    p = {"w": jnp.asarray(rs.randn(4, 16) / 2.),
         "v": jnp.asarray(rs.randn(16, 2) / 4.)}
    f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
    x = jnp.asarray(rs.randn(40, 4))
    op = autontk.ntk_operator(f, x, p, trace_axes=(), batch_size=16,
                              implementation="jacobian_contraction")
    yield np.asarray(op.to_dense()), op


@pytest.mark.parametrize("preconditioner", ["auto", "diag", None])
def test_cg_matches_dense_solve(dense, preconditioner):
  k, op = dense
  with jax.enable_x64(True):
    b = np.random.RandomState(1).randn(M, 3)
    shift = 1e-3
    with warnings.catch_warnings():
      warnings.simplefilter("error", solvers.ConvergenceWarning)
      x, info = solvers.solve(op, b, shift=shift, tol=1e-10,
                              preconditioner=preconditioner,
                              return_info=True)
    want = np.linalg.solve(k + shift * np.eye(M), b)
    np.testing.assert_allclose(x, want, rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())
    assert info.converged and info.residual <= 1e-9


def test_nystrom_cuts_iterations(dense):
  """On a fast-decaying spectrum (here condition ~1e6 after the shift)
  plain CG does not reach tol=1e-8 in 1000 iterations; with the Nyström
  preconditioner of rank 60 it takes about 65."""
  _, op = dense
  with jax.enable_x64(True):
    b = np.random.RandomState(2).randn(M)
    with pytest.warns(solvers.ConvergenceWarning):
      _, plain = solvers.solve(op, b, shift=1e-6, tol=1e-8,
                               preconditioner=None, return_info=True)
    _, pre = solvers.solve(op, b, shift=1e-6, tol=1e-8, rank=60,
                           return_info=True)
  assert plain.iterations == 1000 and not plain.converged
  assert pre.converged and pre.iterations < 100, pre
  assert (plain.rank, pre.rank) == (0, 60)


def test_info_reports_the_rank_auto_reached(dense):
  """``rank="auto"`` starts from 50 columns and may grow to half of M
  (60 here); the info says where it stopped."""
  _, op = dense
  with jax.enable_x64(True):
    b = np.random.RandomState(3).randn(M, 4)
    _, info = solvers.solve(op, b, shift=1e-6, tol=1e-8, return_info=True)
    _, diag = solvers.solve(op, b, shift=1e-6, tol=1e-8,
                            preconditioner="diag", return_info=True)
  assert info.rank in (50, 60), info
  assert diag.rank == 0


class _Recording(autontk.MatrixOperator):
  """A dense operator that records the operand shapes its products run on
  (at run time: a callback under ``vmap`` runs once per mapped element)."""

  def __init__(self, matrix):
    super().__init__(matrix)
    self.shapes = []

  def matmat(self, v):
    jax.debug.callback(lambda a: self.shapes.append(np.shape(a)), v)
    return super().matmat(v)


def test_cg_columns_reach_the_operator_side_by_side(dense):
  """One CG per column (``vmap``) still hands the operator one ``(M, R)``
  product per iteration: an NTK operator can then contract per-example
  Jacobians with every column at once."""
  k, _ = dense
  with jax.enable_x64(True):
    op = _Recording(jnp.asarray(k))
    b = np.random.RandomState(7).randn(M, 3)
    x = solvers.solve(op, b, shift=0.1, tol=1e-10, preconditioner=None)
  assert op.shapes and set(op.shapes) == {(M, 3)}, set(op.shapes)
  np.testing.assert_allclose(x, np.linalg.solve(k + 0.1 * np.eye(M), b),
                             rtol=1e-6)


def test_cg_vector_x0_and_callable_preconditioner(dense):
  k, op = dense
  with jax.enable_x64(True):
    b = np.random.RandomState(3).randn(M)
    want = np.linalg.solve(k + 0.1 * np.eye(M), b)
    x = solvers.solve(op, b, shift=0.1, tol=1e-10, x0=want * 0.9,
                      preconditioner=lambda v: v / (jnp.diag(k) + 0.1))
  assert x.shape == (M,)
  np.testing.assert_allclose(x, want, rtol=1e-6)


def test_cg_warns_when_not_converged(dense):
  _, op = dense
  with jax.enable_x64(True):
    b = np.random.RandomState(4).randn(M)
    with pytest.warns(solvers.ConvergenceWarning, match="relative residual"):
      _, info = solvers.solve(op, b, shift=1e-8, maxiter=3,
                              preconditioner=None, return_info=True)
  assert not info.converged and info.iterations == 3


def test_cg_errors(dense):
  _, op = dense
  with pytest.raises(ValueError, match=r"shape \(120,\) or \(120, R\)"):
    solvers.solve(op, np.ones(M + 1))
  with pytest.raises(ValueError, match="non-finite"):
    solvers.solve(op, np.full(M, np.nan))
  with pytest.raises(ValueError, match="preconditioner"):
    solvers.solve(op, np.ones(M), preconditioner="ilu")
  with pytest.raises(TypeError, match="MatrixOperator"):
    solvers.solve(np.eye(3), np.ones(3))
  bad = autontk.MatrixOperator(jnp.full((4, 4), jnp.nan))
  with pytest.raises(ValueError, match="not finite"):
    solvers.solve(bad, np.ones(4), preconditioner=None)


def test_top_eigenvalues(dense):
  k, op = dense
  with jax.enable_x64(True):
    w, u = solvers.eigsh(op, 10)
  want = np.linalg.eigvalsh(k)[::-1][:10]
  np.testing.assert_allclose(w, want, rtol=1e-3)
  assert u.shape == (M, 10)
  np.testing.assert_allclose(np.abs(np.sum(u * (k @ u), 0)), want,
                             rtol=1e-3)
  np.testing.assert_allclose(solvers.max_eigenvalue(op), want[0], rtol=1e-6)


def test_smallest_eigenvalues_and_dense_route():
  with jax.enable_x64(True):
    k = _spectrum_matrix(m=60, decay=0.97)  # well conditioned
    op = autontk.MatrixOperator(jnp.asarray(k))
    w, _ = solvers.eigsh(op, 3, which="smallest", maxiter=500, tol=1e-4)
    np.testing.assert_allclose(w, np.linalg.eigvalsh(k)[:3][::-1],
                               rtol=1e-3)
    w, _ = solvers.eigsh(op, 20)  # 5k >= M: dense
    np.testing.assert_allclose(w, np.linalg.eigvalsh(k)[::-1][:20],
                               rtol=1e-8)
  with pytest.raises(ValueError, match="`k`"):
    solvers.eigsh(op, 0)
  with pytest.raises(ValueError, match="which"):
    solvers.eigsh(op, 2, which="middle")


def test_eigsh_warns_when_not_converged(dense):
  _, op = dense
  with jax.enable_x64(True):
    with pytest.warns(solvers.ConvergenceWarning, match="eigsh"):
      solvers.eigsh(op, 8, maxiter=2, tol=1e-12)


def test_matfun_exp_many_times(dense):
  k, op = dense
  with jax.enable_x64(True):
    b = np.random.RandomState(5).randn(M, 2)
    ts = jnp.array([0.5, 3.0, 20.0])
    y = solvers.matfun(op, b, lambda lam: jnp.exp(-ts[:, None] * lam))
    want = np.stack([scipy.linalg.expm(-t * k) @ b for t in np.asarray(ts)])
    assert y.shape == (3, M, 2)
    np.testing.assert_allclose(y, want, rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())
    y = solvers.matfun(op, b[:, 0], lambda lam: jnp.exp(-lam), shift=0.5)
    np.testing.assert_allclose(
        y, scipy.linalg.expm(-(k + 0.5 * np.eye(M))) @ b[:, 0], rtol=1e-6)


def test_matfun_gradient_flow_phi(dense):
  """φ(Θ) = (1 − e^{−τΘ}) / Θ, with its limit τ at 0."""
  k, op = dense
  tau = 2.0

  def phi(lam):
    small = jnp.abs(lam) < 1e-12
    safe = jnp.where(small, 1.0, lam)
    return jnp.where(small, tau, -jnp.expm1(-tau * lam) / safe)

  with jax.enable_x64(True):
    b = np.random.RandomState(6).randn(M)
    y = solvers.matfun(op, b, phi)
  w, u = np.linalg.eigh(k)
  want = u @ (-np.expm1(-tau * w) / w * (u.T @ b))
  np.testing.assert_allclose(y, want, rtol=1e-5)


def test_matfun_warns_and_checks(dense, tmp_path, capsys):
  _, op = dense
  with jax.enable_x64(True):
    b = np.random.RandomState(7).randn(M)
    with pytest.warns(solvers.ConvergenceWarning, match="Lanczos"):
      solvers.matfun(op, b, lambda lam: jnp.exp(-100 * lam), steps=6,
                     tol=1e-14)
    stiff = autontk.MatrixOperator(jnp.diag(jnp.logspace(0, 6, 50)))
    with pytest.warns(solvers.ConvergenceWarning, match="still zero"):
      # The first steps see only large eigenvalues, where exp(-λ) is 0.
      solvers.matfun(stiff, np.ones(50), lambda lam: jnp.exp(-lam), steps=10)
    with pytest.raises(ValueError, match="steps"):
      solvers.matfun(op, b, jnp.exp, steps=M + 1)
    with pytest.raises(ValueError, match="non-finite"):
      solvers.matfun(op, np.full(M, np.inf), jnp.exp)
    solvers.matfun(op, b, lambda lam: jnp.exp(-lam), progress=True)
  assert "Lanczos" in capsys.readouterr().err


def test_lanczos_pieces_against_eigh():
  """tridiagonalize, ritz and quadrature (the diagnostics' Lanczos) on a
  host product in float64, without jax_enable_x64."""
  rs = np.random.RandomState(11)
  m = 40
  u, _ = np.linalg.qr(rs.randn(m, m))
  lam = np.linspace(0.1, 3.0, m)
  a = (u * lam) @ u.T
  v = rs.randn(m, 3)
  product = lambda x: a @ np.asarray(x)
  norms = np.linalg.norm(v, axis=0)
  want = np.einsum("mr,mr->r", v, (u * np.log(lam)) @ u.T @ v)
  alpha, beta = lanczos.tridiagonalize(product, v, m)
  assert alpha.dtype == np.float64 and alpha.shape == beta.shape == (3, m)
  theta, _ = lanczos.ritz(alpha, beta)
  np.testing.assert_allclose(theta, np.broadcast_to(lam, (3, m)), atol=1e-10)
  np.testing.assert_allclose(lanczos.quadrature(alpha, beta, norms, np.log),
                             want, rtol=1e-10)
  for full in (True, False):  # the three-term recurrence alone too
    alpha, beta = lanczos.tridiagonalize(product, v, 20,
                                         reorthogonalize=full)
    np.testing.assert_allclose(
        lanczos.quadrature(alpha, beta, norms, np.log), want, rtol=1e-6)


def test_lanczos_stops_on_an_invariant_subspace():
  """A start vector in a 4-dimensional eigenspace: beta is zero from step 4
  on and the Ritz values of those steps are its eigenvalues."""
  lam = np.arange(1.0, 11.0)
  v = np.zeros((10, 1))
  v[:4] = 1.0
  alpha, beta = lanczos.tridiagonalize(lambda x: lam[:, None] * np.asarray(x),
                                       v, 8)
  assert np.all(beta[0, 3:] == 0) and np.all(alpha[0, 4:] == 0)
  np.testing.assert_allclose(lanczos.ritz(alpha[0, :4], beta[0, :4])[0],
                             lam[:4], rtol=1e-12)


def test_lanczos_docstring_examples():
  import doctest
  assert doctest.testmod(lanczos).failed == 0


class _Counting:
  """An operator counting its products."""

  def __init__(self, op):
    self.op, self.shape, self.dtype, self.calls = op, op.shape, op.dtype, 0

  def matmat(self, v):
    self.calls += 1
    return self.op.matmat(v)


def test_matfun_resumes_from_a_checkpoint(dense, tmp_path):
  _, op = dense
  fn = lambda lam: jnp.exp(-lam)
  with jax.enable_x64(True):
    b = np.random.RandomState(8).randn(M, 2)
    first = solvers.matfun(op, b, fn, checkpoint=tmp_path)
    again = _Counting(op)
    second = solvers.matfun(again, b, fn, checkpoint=tmp_path)
  np.testing.assert_array_equal(first, second)
  assert again.calls == 0  # the saved run was complete


@pytest.mark.slow
def test_solvers_on_the_matrix_free_ntk(ntk):
  k, op = ntk
  m = op.shape[0]
  with jax.enable_x64(True):
    b = np.random.RandomState(9).randn(m, 2)
    shift = 1e-3 * np.trace(k) / m
    x = solvers.solve(op, b, shift=shift, tol=1e-10)
    np.testing.assert_allclose(x, np.linalg.solve(k + shift * np.eye(m), b),
                               rtol=1e-4, atol=1e-8)
    w, _ = solvers.eigsh(op, 10)
    np.testing.assert_allclose(w, np.linalg.eigvalsh(k)[::-1][:10],
                               rtol=1e-3)
    y = solvers.matfun(op, b, lambda lam: jnp.exp(-lam / m))
    np.testing.assert_allclose(y, scipy.linalg.expm(-k / m) @ b, rtol=1e-4,
                               atol=1e-8)


def test_cg_checkpoints_and_resumes(dense, tmp_path):
  """Segments of 5 iterations, interrupted by maxiter, then resumed."""
  k, op = dense
  with jax.enable_x64(True):
    b = np.random.RandomState(10).randn(M, 2)
    with pytest.warns(solvers.ConvergenceWarning):
      _, first = solvers.solve(op, b, shift=1e-3, tol=1e-10, maxiter=10,
                               segment=5, checkpoint=tmp_path,
                               preconditioner=None, return_info=True)
    assert first.iterations == 10
    x, info = solvers.solve(op, b, shift=1e-3, tol=1e-10, segment=50,
                            checkpoint=tmp_path, preconditioner=None,
                            return_info=True)
  assert info.converged and info.iterations > 10
  np.testing.assert_allclose(x, np.linalg.solve(k + 1e-3 * np.eye(M), b),
                             rtol=1e-6)
