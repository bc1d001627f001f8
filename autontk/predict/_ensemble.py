"""The Gaussian of an infinite ensemble trained by gradient flow on MSE:
``gradient_descent_mse_ensemble``."""

from __future__ import annotations

import collections
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from autontk._types import Axes
from autontk.predict import _kernel, _layout, _mse
from autontk.predict._gp import Gaussian, by_get, dense_2d, gp_inference
from autontk.predict._kernel import TrainKernel
from autontk.predict._layout import Layout

_Kernel = collections.namedtuple("Kernel", "nngp ntk", defaults=(None, None))


def _dependency(gets: tuple[str, ...], compute_cov: bool) -> tuple[str, ...]:
  for g in gets:
    if g not in ("nngp", "ntk"):
      raise NotImplementedError(
          f'Can only get either "nngp" or "ntk" predictions, got {g}.')
  need = ()
  if "nngp" in gets or ("ntk" in gets and compute_cov):
    need += ("nngp",)
  return need + (("ntk",) if "ntk" in gets else ())


def _is_array(x: Any) -> bool:
  return all(isinstance(v, (np.ndarray, jax.Array))
             for v in jax.tree.leaves(x))


def test_kwargs(train_kwargs: dict, test_kwargs: dict
                ) -> tuple[dict[str, Any], dict[str, Any]]:
  """The kernel_fn kwargs of the test-train and test-test calls.

  Keys not given again for the test set keep their train values; a pair of
  arrays ``(train_value, test_value)`` given for both sets is recombined
  into ``(test, train)`` for the test-train call; other values must agree.
  """
  td, tt = dict(train_kwargs), dict(train_kwargs)
  for k, v_tt in test_kwargs.items():
    v_dd = train_kwargs[k]
    if _is_array(v_dd) and _is_array(v_tt):
      pairs = all(isinstance(v, tuple) and len(v) == 2 for v in (v_dd, v_tt))
      td[k] = (v_tt[0], v_dd[0]) if pairs else v_tt
    elif v_dd != v_tt:
      raise ValueError(f"Same keyword argument {k} of `kernel_fn` is set to "
                       f"different values {v_dd} != {v_tt} when computing the "
                       f"train-train and test-train/test-test kernels.")
    else:
      td[k] = v_tt
    tt[k] = v_tt
  return td, tt


def gradient_descent_mse_ensemble(
    kernel_fn: Callable[..., Any], x_train: Any, y_train: jax.Array,
    learning_rate: float = 1., diag_reg: float = 0.,
    diag_reg_absolute_scale: bool = False, trace_axes: Axes = (-1,),
    **kernel_fn_train_train_kwargs: Any) -> EnsembleFlow:
  """The Gaussian of the outputs of an infinite ensemble of networks trained
  by gradient flow on MSE, from their NNGP (covariance at initialization)
  and NTK.

  Args:
    kernel_fn: ``kernel_fn(x1, x2, get, **kwargs)`` returning a kernel (a
      string ``get``) or a namedtuple of ``nngp`` / ``ntk`` kernels (a tuple
      ``get``), e.g. :func:`autontk.empirical_kernel_fn`'s result with
      ``params=`` in the kwargs.
    x_train: train inputs.
    y_train: train targets, e.g. ``(N, O)``.
    learning_rate: the step size; times are in its units.
    diag_reg: strength of the diagonal regularizer of the train kernels.
    diag_reg_absolute_scale: ``diag_reg`` in absolute units (else relative
      to the kernel's mean diagonal).
    trace_axes: the target axes the kernels are traced over.
    **kernel_fn_train_train_kwargs: passed to ``kernel_fn`` for the
      train-train kernel, and for the test kernels unless ``predict_fn`` is
      given them again; a pair of arrays (one per input of ``kernel_fn``)
      given to both becomes ``(test value, train value)`` for the
      test-train kernel.

  Returns:
    ``predict_fn(t=None, x_test=None, get=None, compute_cov=False,
    **kernel_fn_test_test_kwargs)`` returning the mean (or a
    :class:`Gaussian` when ``compute_cov``) on ``x_test`` (``None``: the
    train set) at time[s] ``t`` (``None``: infinity), for ``get`` in
    ``"nngp"``, ``"ntk"`` or a tuple (``None``: both).

  >>> import jax.numpy as jnp, autontk
  >>> kernel_fn = lambda x1, x2, get: jnp.eye(3)
  >>> predict_fn = autontk.predict.gradient_descent_mse_ensemble(
  ...     kernel_fn, None, jnp.ones((3, 1)))
  >>> predict_fn(t=None, get="ntk").shape
  (3, 1)
  """
  return EnsembleFlow(kernel_fn, x_train, y_train, learning_rate, diag_reg,
                      diag_reg_absolute_scale, trace_axes,
                      kernel_fn_train_train_kwargs)


class EnsembleFlow:
  """The ``predict_fn`` of :func:`gradient_descent_mse_ensemble`; train
  kernels and their factors are computed on first use and kept."""

  def __init__(self, kernel_fn: Callable[..., Any], x_train: Any,
               y_train: jax.Array, learning_rate: float, diag_reg: float,
               absolute: bool, trace_axes: Axes, train_kwargs: dict):
    self.kernel_fn, self.x_train = kernel_fn, x_train
    self.y_train = jnp.asarray(y_train)
    self.layout = Layout(self.y_train.shape, trace_axes)
    self.learning_rate, self.reg = learning_rate, (diag_reg, absolute)
    self.trace_axes, self.train_kwargs = trace_axes, train_kwargs
    self._kernels: dict[str, Any] = {}
    self._train: dict[str, TrainKernel] = {}
    self._infinite: dict[tuple[str, ...], Any] = {}

  def train_kernels(self, gets: tuple[str, ...]) -> _Kernel:
    """The train-train kernels ``gets``, each computed once."""
    missing = [g for g in gets if g not in self._kernels]
    if len(missing) == 2:
      self._kernels.update(self.kernel_fn(
          self.x_train, None, tuple(missing), **self.train_kwargs)._asdict())
    for g in missing if len(missing) == 1 else ():
      self._kernels[g] = self.kernel_fn(self.x_train, None, g,
                                        **self.train_kwargs)
    return _Kernel(**self._kernels)

  def train(self, g: str) -> TrainKernel:
    if g not in self._train:
      self._train[g] = TrainKernel(
          getattr(self.train_kernels((g,)), g), self.layout, *self.reg,
          name=f"kernel_fn(x_train).{g}")
    return self._train[g]

  def infinite(self, needed: tuple[str, ...]) -> Any:
    """The infinite-time predictor: :func:`gp_inference`'s."""
    if needed not in self._infinite:
      self._infinite[needed] = gp_inference(
          self.train_kernels(needed), self.y_train, *self.reg,
          trace_axes=self.trace_axes)
    return self._infinite[needed]

  def kernels(self, needed, x_test, compute_cov, test_test_kwargs):
    """Train-train, test-train and test-test NNGP (or ``compute_cov``)."""
    k_dd = self.train_kernels(needed)
    if x_test is None:
      return k_dd, None, (compute_cov or None)
    td_kwargs, tt_kwargs = test_kwargs(self.train_kwargs, test_test_kwargs)
    k_td = self.kernel_fn(x_test, self.x_train, needed, **td_kwargs)
    nngp_tt = (self.kernel_fn(x_test, None, "nngp", **tt_kwargs)
               if compute_cov else None)
    return k_dd, k_td, nngp_tt

  def __call__(self, t: Any = None, x_test: Any = None, get: Any = None,
               compute_cov: bool = False,
               **kernel_fn_test_test_kwargs: Any) -> Any:
    """Mean [and covariance] on ``x_test`` at time[s] ``t``."""
    single, gets = _layout.canonicalize_get(get)
    needed = _dependency(gets, compute_cov)
    k_dd, k_td, nngp_tt = self.kernels(needed, x_test, compute_cov,
                                       kernel_fn_test_test_kwargs)
    if t is None:
      out = self.infinite(needed)(get=gets, k_test_train=k_td,
                                  k_test_test=nngp_tt)
      return out[0] if single else out
    t = jnp.asarray(t, self.train(gets[0]).dtype) * self.learning_rate
    out = {g: self._finite(g, t, k_dd, k_td, nngp_tt) for g in gets}
    return by_get("Gaussians", single, gets, out)

  def _finite(self, g, t, k_dd, k_td, nngp_tt):
    kernel, layout, size = self.train(g), self.layout, self.y_train.size
    y = layout.to_matrix(self.y_train)
    if k_td is None:
      mean = -kernel.apply(_mse.expm1_fn(size, t), y)
      kept, ktd = layout.kept, None
    else:
      ktd = getattr(k_td, g)
      mean, kept = _kernel.cross(ktd, layout,
                                 -kernel.apply(_mse.inv_expm1_fn(size, t), y))
    mean = layout.from_matrix(mean.reshape(t.shape + mean.shape[1:]), kept)
    if nngp_tt is None:
      return mean
    cov = _covariance(g, kernel, t, size, dense_2d(k_dd.nngp, "nngp"),
                      ktd, k_td, nngp_tt)
    cov = _layout.zip_2d(cov.reshape(t.shape + cov.shape[1:]), kept, kept)
    return Gaussian(mean, cov)


def _covariance(g: str, kernel: TrainKernel, t: jax.Array, size: int,
                nngp_dd: jax.Array, ktd: Any, k_td: Any, nngp_tt: Any
                ) -> jax.Array:
  """The ``(T, M', M')`` covariance of ``g``'s ensemble at times ``t``."""
  eye = jnp.eye(nngp_dd.shape[0], dtype=kernel.dtype)
  tt = jnp.reshape(t, (-1, 1))
  if ktd is None:
    if g == "nngp":
      fn = lambda lam: (jnp.maximum(lam, 0.) * jnp.exp(
          -2 * jnp.maximum(lam, 0.) * tt / size))
      return kernel.apply(fn, eye)
    exp = kernel.apply(lambda lam: jnp.exp(-jnp.maximum(lam, 0.) * tt / size),
                       eye)
    return exp @ nngp_dd @ jnp.swapaxes(exp, -1, -2)
  ktd = dense_2d(ktd, f"k_test_train.{g}")
  nngp_tt = dense_2d(nngp_tt, "nngp_test_test")
  if g == "nngp":
    inv = -kernel.apply(_mse.inv_expm1_fn(size, 2 * t), ktd.T)
    return nngp_tt - ktd @ inv
  term_1 = -kernel.apply(_mse.inv_expm1_fn(size, t), ktd.T)
  term_2 = ktd @ -kernel.apply(_mse.inv_expm1_fn(size, t),
                               dense_2d(k_td.nngp, "k_test_train.nngp").T)
  term_2 = term_2 + jnp.swapaxes(term_2, -1, -2)
  cov = jnp.swapaxes(term_1, -1, -2) @ nngp_dd @ term_1
  return cov - term_2 + nngp_tt
