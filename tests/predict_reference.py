"""Independent float64 reference for ``autontk.predict``.

Shares no code with the package: a kernel becomes the full matrix on the
flattened targets (identity over traced axes, built by one NumPy einsum),
finite times use ``scipy.linalg.expm``, infinite time ``np.linalg.solve``,
and general losses are integrated with ``scipy.integrate.solve_ivp``.
"""

from __future__ import annotations

import string

import numpy as np
import scipy.integrate
import scipy.linalg


def zipped(k2d, kept1, kept2):
  """An ``(M1, M2)`` matrix -> the zipped kernel ``(a1, b1, a2, b2, ...)``."""
  n = len(kept1)
  k = np.asarray(k2d).reshape(tuple(kept1) + tuple(kept2))
  return k.transpose([i + j * n for i in range(n) for j in (0, 1)])


def unzipped(k):
  """A zipped kernel -> its ``(M1, M2)`` matrix."""
  k = np.asarray(k, np.float64)
  k = k.transpose(list(range(0, k.ndim, 2)) + list(range(1, k.ndim, 2)))
  half = k.ndim // 2
  return k.reshape(int(np.prod(k.shape[:half])), -1)


def full_operator(k, y_shape, trace_axes):
  """The kernel on flattened targets: ``k`` over the kept axes of targets of
  shape ``y_shape`` (first axis may differ for a test kernel), the identity
  over ``trace_axes``."""
  k = np.asarray(k, np.float64)
  d = len(y_shape)
  trace = sorted({a % d for a in trace_axes})
  rows, cols = string.ascii_lowercase[:d], string.ascii_uppercase[:d]
  kept = [i for i in range(d) if i not in trace]
  subs = ["".join(rows[i] + cols[i] for i in kept)]
  operands = [k]
  for i in trace:
    subs.append(rows[i] + cols[i])
    operands.append(np.eye(y_shape[i]))
  full = np.einsum(",".join(subs) + "->" + rows + cols, *operands)
  return full.reshape(int(np.prod(full.shape[:d])), -1)


def regularized(k, diag_reg, absolute):
  k = np.asarray(k, np.float64)
  reg = diag_reg if absolute else diag_reg * np.trace(k) / k.shape[0]
  return k + reg * np.eye(k.shape[0])


def mse(k, k_td, y, fx0, fx0_test, t, lr, diag_reg, absolute):
  """Train and test outputs (flattened, one row per time) of gradient flow
  on ``0.5 · mean((f - y)²)``; ``t=None`` is infinite time."""
  a = regularized(k, diag_reg, absolute)
  y, fx0, fx0_test = (np.asarray(v, np.float64).reshape(-1)
                      for v in (y, fx0, fx0_test))
  if t is None:
    return y, fx0_test + k_td @ np.linalg.solve(a, y - fx0)
  train, test = [], []
  for ti in np.ravel(t):
    step = scipy.linalg.expm(-a * lr * ti / y.size) - np.eye(len(y))
    train.append(fx0 + step @ (fx0 - y))
    test.append(fx0_test + k_td @ np.linalg.solve(a, step @ (fx0 - y)))
  return np.array(train), np.array(test)


def gp_cov(g, train, test_train, test_test, diag_reg, absolute):
  """Posterior covariance on the kept axes; the arguments are dicts of
  ``"nngp"`` / ``"ntk"`` matrices."""
  if g in ("nngp", "ntkgp"):
    k = "nngp" if g == "nngp" else "ntk"
    a = regularized(train[k], diag_reg, absolute)
    td = test_train[k]
    return test_test[k] - td @ np.linalg.solve(a, td.T)
  a = regularized(train["ntk"], diag_reg, absolute)
  t1 = np.linalg.solve(a, test_train["ntk"].T)
  t2 = test_train["ntk"] @ np.linalg.solve(a, test_train["nngp"].T)
  return t1.T @ train["nngp"] @ t1 - t2 - t2.T + test_test["nngp"]


def ensemble_mean(k, k_td, y, t, lr, diag_reg, absolute):
  """Mean of the MSE ensemble at times ``t`` (flattened, one row per
  time); ``k_td=None`` for the train set."""
  a = regularized(k, diag_reg, absolute)
  y = np.asarray(y, np.float64).reshape(-1)
  out = []
  for ti in np.ravel(t):
    move = (np.eye(len(y)) - scipy.linalg.expm(-a * lr * ti / y.size)) @ y
    out.append(move if k_td is None else k_td @ np.linalg.solve(a, move))
  return np.array(out)


def ensemble_cov(g, train, test_train, nngp_tt, t, lr, size, diag_reg,
                 absolute):
  """Covariance of the MSE ensemble on the kept axes at times ``t``;
  ``test_train=None`` for the train set."""
  a = regularized(train[g], diag_reg, absolute)
  out = []
  for ti in np.ravel(t):
    e = scipy.linalg.expm(-a * lr * ti / size)
    if test_train is None:
      out.append(a @ e @ e if g == "nngp" else e @ train["nngp"] @ e)
      continue
    move = np.eye(len(a)) - e
    if g == "nngp":
      td = test_train["nngp"]
      twice = np.eye(len(a)) - e @ e
      out.append(nngp_tt - td @ np.linalg.solve(a, twice @ td.T))
      continue
    t1 = np.linalg.solve(a, move @ test_train["ntk"].T)
    t2 = test_train["ntk"] @ np.linalg.solve(a, move @ test_train["nngp"].T)
    out.append(t1.T @ train["nngp"] @ t1 - t2 - t2.T + nngp_tt)
  return np.array(out)


def ode(grad_loss, k, k_td, fx0, fx0_test, ts, lr, momentum=None):
  """Integrates ``df/dt = -lr K ∇loss(f)`` (and the test outputs), or the
  momentum ODE in units of ``√lr``, at times ``ts``; float64, tight
  tolerances."""
  n, nt = len(fx0), len(fx0_test)
  if momentum is None:
    def rhs(_, s):
      g = grad_loss(s[:n])
      return np.concatenate([-k @ g, -k_td @ g])
    s0 = np.concatenate([fx0, fx0_test])
    scale = lr
  else:
    scale = lr ** 0.5
    m = (momentum - 1.) / scale

    def rhs(_, s):
      f, q = s[:n + nt], s[n + nt:]
      g = grad_loss(f[:n])
      dq = np.concatenate([-k @ g, -k_td @ g]) + m * q
      return np.concatenate([q, dq])
    s0 = np.concatenate([fx0, fx0_test, np.zeros(n + nt)])
  ts = np.asarray(ts, np.float64) * scale
  sol = scipy.integrate.solve_ivp(rhs, (0., ts.max()), s0, t_eval=ts,
                                  method="DOP853", rtol=1e-12, atol=1e-12)
  out = sol.y.T
  return out[:, :n], out[:, n:n + nt]
