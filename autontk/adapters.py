"""Models as they are: flax nnx and linen modules, equinox modules, haiku.

autontk takes a network as ``f(params, x, **kwargs)``. Each adapter here
writes that function for one library with the library's own split/merge
API, and returns it with the parameters in the library's own form:

===============  ==========================================  ===============
adapter          the kernel is taken with respect to         the call takes
===============  ==========================================  ===============
:func:`nnx`      the ``nnx.Param`` variables                 ``nnx.State``
:func:`linen`    the ``"params"`` collection                 params dict
:func:`equinox`  the inexact-array leaves (``eqx.partition``)  the module
:func:`haiku`    haiku's params (``state`` held fixed)        params dict
===============  ==========================================  ===============

Everything else the model holds (BatchNorm statistics, RNG state, other
collections, non-array fields) is captured when the adapter is called and
held constant. :func:`autontk.ntk_fn` calls :func:`as_model` on what it is
given, so ``autontk.ntk_fn(nnx_module)`` works directly.

The libraries are optional: they are imported only by the adapter that
needs them, and :func:`as_model` recognises a model only when its library is
already imported (a model object cannot exist otherwise).
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from typing import Any

import jax

from autontk._types import ApplyFn, PyTree


@dataclasses.dataclass(frozen=True)
class Model:
  """A network in autontk's form.

  Attributes:
    f: ``f(params, x, **kwargs) -> outputs``.
    params: the parameters in the form ``f`` (and the kernel call) takes;
      ``None`` when the adapter was not given them (haiku).
    library: which adapter made it.
  """

  f: ApplyFn
  params: PyTree = None
  library: str = ""

  def __iter__(self):  # f, params = adapters.nnx(model)
    return iter((self.f, self.params))


def nnx(model: Any) -> Model:
  """A flax ``nnx.Module`` as ``f(params, x)``; params are its ``nnx.Param``
  variables (an ``nnx.State``); every other variable is held fixed.

  Args:
    model: the module. Its non-parameter state (``BatchStat``, RNG counts)
      is captured now; build a new adapter after updating it.

  Returns:
    A :class:`Model` whose ``params`` is ``nnx.state(model, nnx.Param)``.

  >>> from flax import nnx as fnnx
  >>> import jax.numpy as jnp, autontk
  >>> net = fnnx.Linear(3, 2, rngs=fnnx.Rngs(0))
  >>> f, params = autontk.adapters.nnx(net)
  >>> autontk.ntk_fn(f)(jnp.ones((4, 3)), None, params).shape
  (4, 4)
  """
  from flax import nnx as flax_nnx  # optional library
  graphdef, params, rest = flax_nnx.split(model, flax_nnx.Param, ...)

  def f(p, x, **kwargs):
    return flax_nnx.merge(graphdef, p, rest)(x, **kwargs)

  return Model(f, params, "flax.nnx")


def linen(module: Any, variables: PyTree | None = None, *,
          method: Any = None, mutable: Any = False) -> Model:
  """A flax linen module as ``f(params, x)``; params are the ``"params"``
  collection, every other collection of ``variables`` is held fixed.

  Args:
    module: the ``flax.linen.Module``.
    variables: its variables (``module.init(...)``); ``None`` for a module
      with parameters only.
    method: passed to ``module.apply`` (default ``__call__``).
    mutable: passed to ``module.apply``; the updated collections are
      dropped (e.g. ``["batch_stats"]`` for BatchNorm in training mode).

  Returns:
    A :class:`Model` whose ``params`` is ``variables["params"]``.

  >>> import flax.linen as nn, jax, jax.numpy as jnp, autontk
  >>> net = nn.Dense(2)
  >>> variables = net.init(jax.random.PRNGKey(0), jnp.ones((1, 3)))
  >>> f, params = autontk.adapters.linen(net, variables)
  >>> autontk.ntk_fn(f)(jnp.ones((4, 3)), None, params).shape
  (4, 4)
  """
  variables = dict(variables or {})
  params = variables.pop("params", None)

  def f(p, x, **kwargs):
    out = module.apply({"params": p, **variables}, x, method=method,
                       mutable=mutable, **kwargs)
    return out[0] if mutable is not False else out

  return Model(f, params, "flax.linen")


def equinox(model: Any, *, per_example: bool = True,
            axis_name: Any = None) -> Model:
  """An equinox ``Module`` as ``f(params, x)``; params are its inexact-array
  leaves (``eqx.partition(model, eqx.is_inexact_array)``), everything else
  (integer arrays, activation functions, Python numbers) is static.

  Args:
    model: the module.
    per_example: the module maps one example, as equinox layers do: ``f``
      applies it to every example of the batch (axis 0) with ``jax.vmap``.
      ``False``: it takes the whole batch.
    axis_name: the ``vmap`` axis name (for ``eqx.nn.BatchNorm``).

  Returns:
    A :class:`Model` whose ``params`` is the partitioned module; the call
    takes that, or any module of the same structure filtered the same way.

  >>> import equinox as eqx, jax, jax.numpy as jnp, autontk
  >>> net = eqx.nn.Linear(3, 2, key=jax.random.PRNGKey(0))
  >>> f, params = autontk.adapters.equinox(net)
  >>> autontk.ntk_fn(f)(jnp.ones((4, 3)), None, params).shape
  (4, 4)
  """
  import equinox as eqx  # optional library
  params, static = eqx.partition(model, eqx.is_inexact_array)

  def f(p, x, **kwargs):
    m = eqx.combine(p, static)
    if not per_example:
      return m(x, **kwargs)
    return jax.vmap(lambda xi: m(xi, **kwargs), axis_name=axis_name)(x)

  return Model(f, params, "equinox")


def haiku(transformed: Any, params: PyTree | None = None,
          state: PyTree | None = None) -> Model:
  """A haiku transformed function as ``f(params, x, rng=None)``.

  Args:
    transformed: from ``hk.transform`` or ``hk.transform_with_state``
      (with or without ``hk.without_apply_rng``).
    params: its parameters (returned in the :class:`Model`; optional).
    state: the state of a ``transform_with_state`` function, held fixed
      (required for one).

  Returns:
    A :class:`Model`. An ``rng`` kwarg of the kernel call reaches ``apply``
    (split between x1 and x2 as :func:`autontk.ntk_fn` splits keys).

  >>> import haiku as hk, jax, jax.numpy as jnp, autontk
  >>> t = hk.transform(lambda x: hk.Linear(2)(x))
  >>> params = t.init(jax.random.PRNGKey(0), jnp.ones((1, 3)))
  >>> f, params = autontk.adapters.haiku(t, params)
  >>> autontk.ntk_fn(f)(jnp.ones((4, 3)), None, params).shape
  (4, 4)
  """
  import haiku as hk  # optional library
  stateful = isinstance(transformed, hk.TransformedWithState)
  if stateful and state is None:
    raise ValueError("`state` is required for a transform_with_state "
                     "function: adapters.haiku(transformed, params, state).")
  takes_rng = "rng" in inspect.signature(transformed.apply).parameters
  apply = transformed.apply

  def f(p, x, rng=None, **kwargs):
    args = ((state,) if stateful else ()) + ((rng,) if takes_rng else ())
    out = apply(p, *args, x, **kwargs)
    return out[0] if stateful else out

  return Model(f, params, "haiku")


def as_model(obj: Any) -> Model | None:
  """The adapted model of a module object, ``obj`` itself if it is a
  :class:`Model`, else ``None`` (a plain ``f``).

  Recognises an ``nnx.Module``, an equinox ``Module``, a linen ``Module``
  (parameters only: pass its variables through :func:`linen` otherwise) and
  a haiku ``hk.transform`` function.
  """
  if isinstance(obj, Model):
    return obj
  flax_nnx = sys.modules.get("flax.nnx")
  if flax_nnx is not None and isinstance(obj, flax_nnx.Module):
    return nnx(obj)
  eqx = sys.modules.get("equinox")
  if eqx is not None and isinstance(obj, eqx.Module):
    return equinox(obj)
  flax_linen = sys.modules.get("flax.linen")
  if flax_linen is not None and isinstance(obj, flax_linen.Module):
    return linen(obj)
  hk = sys.modules.get("haiku")
  if hk is not None and isinstance(obj, hk.TransformedWithState):
    raise ValueError("A transform_with_state function needs its state: pass "
                     "autontk.adapters.haiku(transformed, params, state).")
  if hk is not None and isinstance(obj, hk.Transformed):
    return haiku(obj)
  return None


def apply_fn(obj: Any) -> ApplyFn:
  """``f(params, x, **kwargs)`` of a model object (:func:`as_model`), or
  ``obj`` itself when it is a plain function."""
  model = as_model(obj)
  return obj if model is None else model.f
