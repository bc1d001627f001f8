"""The GP posterior of NNGP / NTK / NTKGP: ``gp_inference``."""

from __future__ import annotations

import collections
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from autontk._types import Axes
from autontk.predict import _kernel, _layout
from autontk.predict._kernel import TrainKernel
from autontk.predict._layout import Layout


class Gaussian(NamedTuple):
  """A ``(mean, covariance)`` pair.

  Attributes:
    mean: shape of the outputs, e.g. ``(N_test, O)`` (with leading time
      axes where times were asked for).
    covariance: shape of the kernel, e.g. ``(N_test, N_test)``.
  """
  mean: jax.Array
  covariance: jax.Array


@functools.lru_cache(maxsize=None)
def _namedtuple(name: str, fields: tuple[str, ...]) -> type:
  return collections.namedtuple(name, fields)


def by_get(name: str, single: bool, get: tuple[str, ...],
           out: dict[str, Any]) -> Any:
  """neural-tangents' return convention: the value for a single string
  ``get``, else a namedtuple ``name`` with fields in ``get``'s order."""
  if single:
    return out[get[0]]
  return _namedtuple(name, get)(*(out[g] for g in get))


def dense_2d(k: Any, name: str) -> jax.Array:
  """A kernel needed as a matrix (covariances), checked finite."""
  if _kernel.is_operator(k):
    raise ValueError(f"`{name}` must be an array to compute covariances, "
                     f"got an operator.")
  k = jnp.asarray(k)
  _layout.check_finite(k, name)
  return _layout.to_2d(k)


def gp_inference(k_train_train: Any, y_train: jax.Array, diag_reg: float = 0.,
                 diag_reg_absolute_scale: bool = False,
                 trace_axes: Axes = (-1,)) -> GpPosterior:
  """The posterior of NNGP, NTK (an infinite ensemble trained to infinite
  time) or NTKGP inference on a test set.

  Args:
    k_train_train: the train kernel: an array (as for
      :func:`gradient_descent_mse`), an operator, or a namedtuple with
      ``nngp`` and/or ``ntk`` fields holding them (both are needed for the
      NTK posterior covariance).
    y_train: train targets, e.g. ``(N, O)``.
    diag_reg: strength of the diagonal regularizer.
    diag_reg_absolute_scale: ``diag_reg`` in absolute units (else relative
      to the kernel's mean diagonal).
    trace_axes: the target axes the kernels were traced over.

  Returns:
    ``predict_fn(get=None, k_test_train=None, k_test_test=None)``: for
    ``get`` in ``"nngp"``, ``"ntk"``, ``"ntkgp"`` or a tuple of them
    (``None``: ``("nngp", "ntk")``) the posterior mean on the test set, or a
    :class:`Gaussian` ``(mean, covariance)`` when ``k_test_test`` is given.
    ``k_test_train=None`` gives the train set's ``N(y_train, 0)``.
    Covariances need array test kernels (``k_test_train`` of the kernel and,
    for ``"ntk"``, of the NNGP too).

  >>> import jax.numpy as jnp, autontk
  >>> k, y = jnp.eye(3) * 2., jnp.ones((3, 1))
  >>> predict_fn = autontk.predict.gp_inference(k, y)
  >>> predict_fn("nngp", k, k).covariance.shape
  (3, 3)
  """
  return GpPosterior(k_train_train, y_train, diag_reg, diag_reg_absolute_scale,
                     trace_axes)


class GpPosterior:
  """The ``predict_fn`` of :func:`gp_inference`; each train kernel's factor
  is computed on first use and kept."""

  def __init__(self, k_train_train: Any, y_train: jax.Array, diag_reg: float,
               absolute: bool, trace_axes: Axes):
    self.k_train_train = k_train_train
    self.y_train = jnp.asarray(y_train)
    self.layout = Layout(self.y_train.shape, trace_axes)
    self.reg = (diag_reg, absolute)
    self._train: dict[str, TrainKernel] = {}
    self._k_inv_y: dict[str, jax.Array] = {}

  def train(self, g: str) -> TrainKernel:
    """The regularized train kernel ``g`` ("nngp" or "ntk")."""
    if g not in self._train:
      self._train[g] = TrainKernel(_layout.kernel_of(self.k_train_train, g),
                                   self.layout, *self.reg,
                                   name=f"k_train_train.{g}")
    return self._train[g]

  def k_inv_y(self, g: str) -> jax.Array:
    """``(K_g + reg)⁻¹ y`` as an ``(M, R)`` matrix."""
    if g not in self._k_inv_y:
      with jax.ensure_compile_time_eval():
        self._k_inv_y[g] = self.train(g).solve(
            self.layout.to_matrix(self.y_train))
    return self._k_inv_y[g]

  def __call__(self, get: Any = None, k_test_train: Any = None,
               k_test_test: Any = None) -> Any:
    """Posterior mean [and covariance] on the test set."""
    single, gets = _layout.canonicalize_get(get)
    out = {}
    for g in gets:
      if g not in ("nngp", "ntk", "ntkgp"):
        raise ValueError(f'get must hold "nngp", "ntk" or "ntkgp", got {g!r}.')
      out[g] = self._one(g, k_test_train, k_test_test)
    return by_get("Gaussians", single, gets, out)

  def _one(self, g, k_test_train, k_test_test):
    layout, k = self.layout, "ntk" if g == "ntkgp" else g
    dtype = self.train(k).dtype
    k_td = (None if k_test_train is None else
            _layout.kernel_of(k_test_train, k))
    if k_td is None:
      mean, kept = self.y_train.astype(dtype), layout.kept
    else:
      mean, kept = _kernel.cross(k_td, layout, self.k_inv_y(k),
                                 f"k_test_train.{k}")
      mean = layout.from_matrix(mean, kept)
    if k_test_test is None:
      return mean
    if k_td is None:
      return Gaussian(mean, jnp.zeros(layout.kernel_shape(), dtype))
    cov = self._covariance(g, k_td, k_test_train, k_test_test)
    return Gaussian(mean, _layout.zip_2d(cov, kept, kept))

  def _covariance(self, g, k_td, k_test_train, k_test_test):
    if g == "ntk" and not (hasattr(self.k_train_train, "nngp")
                           and hasattr(k_test_train, "nngp")):
      raise ValueError(
          'The NTK posterior covariance on the test set ("ntk" in get, with '
          "k_test_test and k_test_train given) needs both NTK and NNGP "
          "kernels: k_train_train and k_test_train must be namedtuples with "
          "`nngp` and `ntk` fields.")
    k = "ntk" if g != "nngp" else "nngp"
    g_init = "nngp" if g != "ntkgp" else "ntk"
    td = dense_2d(k_td, f"k_test_train.{k}")
    td_init = dense_2d(_layout.kernel_of(k_test_train, g_init),
                       f"k_test_train.{g_init}")
    tt = dense_2d(_layout.kernel_of(k_test_test, g_init),
                  f"k_test_test.{g_init}")
    inv_td_init = self.train(k).solve(td_init.T)
    if g in ("nngp", "ntkgp"):
      return tt - td @ inv_td_init
    term_1 = self.train("ntk").solve(td.T)
    cov = term_1.T @ self.train("nngp").matmat(term_1)
    term_2 = td @ inv_td_init
    return cov - term_2 - term_2.T + tt
