"""Function-space gradient descent on any loss, by an ODE solver:
``gradient_descent``."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.experimental import ode

from autontk._types import Axes
from autontk.predict import _kernel, _mse
from autontk.predict._kernel import TrainKernel
from autontk.predict._layout import Layout


class ODEState(NamedTuple):
  """The state of the function-space ODE.

  Attributes:
    fx_train: train outputs.
    fx_test: test outputs.
    qx_train: the train outputs' auxiliary variable (momentum).
    qx_test: the test outputs' auxiliary variable (momentum).
  """
  fx_train: Optional[jax.Array] = None
  fx_test: Optional[jax.Array] = None
  qx_train: Optional[jax.Array] = None
  qx_test: Optional[jax.Array] = None


def _test_shape(layout: Layout, k_test_train: Any) -> tuple[int, ...]:
  if k_test_train is None:
    return layout.y_shape
  if _kernel.is_operator(k_test_train):
    kept = layout.test_kept(k_test_train.shape[0])
  else:
    kept = _kernel.test_kernel(k_test_train, layout, "k_test_train").shape[::2]
  return layout.shape(kept)


def gradient_descent(loss: Callable[[jax.Array, jax.Array], Any],
                     k_train_train: Any, y_train: jax.Array,
                     learning_rate: float = 1., momentum: Optional[float] = None,
                     trace_axes: Axes = (-1,)) -> OdeFlow:
  """Predicts the outputs of function-space gradient descent (with optional
  momentum) on ``loss`` by integrating its ODE (``jax.experimental.ode``).

  Gradient flow solves ``df/dt = -η Θ ∇loss(f)``; with momentum the ODE is
  second order and solved in units of ``√η`` (so ``t`` and
  ``learning_rate`` are then not interchangeable).

  Args:
    loss: ``loss(fx_train, y_train) -> scalar``, treating examples and
      outputs alike, e.g. ``lambda f, y: 0.5 * jnp.mean((f - y) ** 2)``.
    k_train_train: the train NTK, an array or an operator (as for
      :func:`gradient_descent_mse`).
    y_train: train targets, e.g. ``(N, O)``.
    learning_rate: the step size.
    momentum: the momentum, or ``None`` for plain gradient descent.
    trace_axes: the target axes the kernel was traced over.

  Returns:
    ``predict_fn(t=None, fx_train_or_state_0=0., fx_test_0=None,
    k_test_train=None)`` returning ``fx_train_t``, ``fx_test_t`` or both at
    the increasing time[s] ``t`` (leading axes ``t.shape``), or an
    :class:`ODEState` when given one.

  >>> import jax.numpy as jnp, autontk
  >>> mse = lambda f, y: 0.5 * jnp.mean((f - y) ** 2)
  >>> predict_fn = autontk.predict.gradient_descent(
  ...     mse, jnp.eye(2), jnp.ones((2, 1)))
  >>> predict_fn(jnp.array([0., 1.])).shape
  (2, 2, 1)
  """
  return OdeFlow(loss, k_train_train, y_train, learning_rate, momentum,
                 trace_axes)


class OdeFlow:
  """The ``predict_fn`` of :func:`gradient_descent`."""

  def __init__(self, loss: Callable[[jax.Array, jax.Array], Any],
               k_train_train: Any, y_train: jax.Array, learning_rate: float,
               momentum: Optional[float], trace_axes: Axes):
    self.y_train = y_train = jnp.asarray(y_train)
    self.layout = Layout(y_train.shape, trace_axes)
    self.kernel = TrainKernel(k_train_train, self.layout)
    self.grad_loss = jax.grad(lambda fx: loss(fx, y_train))
    if momentum is not None:
      # The second-order ODE runs in units of √η.
      learning_rate **= 0.5
      momentum = (momentum - 1.0) / learning_rate
    self.learning_rate, self.momentum = learning_rate, momentum

  def __call__(self, t: Any = None, fx_train_or_state_0: Any = 0.,
               fx_test_0: Any = None, k_test_train: Any = None) -> Any:
    """Train [and test] outputs (or the ODE state) at time[s] ``t``."""
    is_state = isinstance(fx_train_or_state_0, ODEState)
    if is_state:
      if fx_test_0 is not None:
        raise ValueError("`fx_test_0` is included in `ODEState` and must be "
                         "set to `None`.")
      _mse.check_inputs(fx_train_or_state_0.fx_train,
                        fx_train_or_state_0.fx_test, k_test_train)
    else:
      _mse.check_inputs(fx_train_or_state_0, fx_test_0, k_test_train)
    dtype = self.kernel.dtype
    t = jnp.asarray(jnp.inf if t is None else t, dtype) * self.learning_rate
    t_shape, t = t.shape, t.reshape(-1)
    # odeint starts at ts[0] and needs increasing times: prepend a start
    # just before a first time of 0.
    t0 = jnp.where(t[0] == 0, jnp.full((1,), -1e-24, dtype),
                   jnp.zeros((1,), dtype))
    state = self._state_0(fx_train_or_state_0, fx_test_0,
                          _test_shape(self.layout, k_test_train))
    states = ode.odeint(self._dstate_dt(k_test_train), state,
                        jnp.concatenate([t0, t]))
    states = jax.tree.map(lambda x: x[1:].reshape(t_shape + x.shape[1:]),
                          states)
    if is_state:
      return states
    if fx_train_or_state_0 is not None and fx_test_0 is None:
      return states.fx_train
    if fx_test_0 is not None and fx_train_or_state_0 is None:
      return states.fx_test
    return states.fx_train, states.fx_test

  def _state_0(self, fx_train_or_state_0, fx_test_0, test_shape):
    y_shape, dtype = self.y_train.shape, self.kernel.dtype
    if isinstance(fx_train_or_state_0, ODEState):
      fx_train_0, fx_test_0, q_train, q_test = fx_train_or_state_0
    else:
      fx_train_0, q_train, q_test = fx_train_or_state_0, None, None
    fill = lambda v, shape: (jnp.zeros(shape, dtype) if v is None else
                             jnp.broadcast_to(v, shape).astype(dtype))
    fx_train_0 = fill(fx_train_0, y_shape)
    if fx_test_0 is not None:
      fx_test_0 = fill(fx_test_0, test_shape)
    if self.momentum is None:
      if q_train is not None or q_test is not None:
        raise ValueError("Got passed momentum state variables, while "
                         "`momentum is None`.")
    else:
      q_train = fill(q_train, y_shape)
      q_test = None if fx_test_0 is None else fill(q_test, test_shape)
    return ODEState(fx_train_0, fx_test_0, q_train, q_test)

  def _dstate_dt(self, k_test_train):
    layout, momentum = self.layout, self.momentum

    def rhs(state: ODEState, unused_t: Any) -> ODEState:
      g = layout.to_matrix(self.grad_loss(state.fx_train))
      d_train = -layout.from_matrix(self.kernel.matmat(g))
      d_test = None
      if state.fx_test is not None:
        d, kept = _kernel.cross(k_test_train, layout, g)
        d_test = -layout.from_matrix(d, kept)
      if momentum is None:
        return ODEState(d_train, d_test)
      d_train = d_train + momentum * state.qx_train
      if state.qx_test is not None:
        d_test = d_test + momentum * state.qx_test
      return ODEState(state.qx_train, state.qx_test, d_train, d_test)
    return rhs
