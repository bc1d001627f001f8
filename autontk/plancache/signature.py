"""Model signatures: a stable key for "this model, these shapes, this device".

The plan cache and the tuner key everything by :func:`model_signature`: a
SHA-256 hex digest of

* the canonical jaxpr of ``f(params, x1, **kwargs)`` traced on abstract
  inputs (printed, with object addresses removed; jaxpr variable names are
  assigned in order by the printer, so they are already canonical);
* the abstract shapes and dtypes and the pytree structure of ``x1``, of
  ``x2`` (or the fact that ``x2`` is ``None``), of ``params`` and of the array
  kwargs; non-array kwargs by value (``train=True`` and ``train=False`` are
  different models);
* the NTK options: ``trace_axes``, ``diagonal_axes`` and ``vmap_axes``
  (``implementation`` is left out: the cache stores what "auto" chose), and
  where given the kernel options: the ``wrt``/``groups`` selection resolved
  against ``params`` (which leaves are differentiated, in which group: two
  selections that pick different leaves never share a plan), the
  pseudo-NTK's ``pseudo_axes``, and a ``precision`` other than the default;
* the backend, the device kind (e.g. ``"NVIDIA H200"``, ``"cpu"``), the
  device count, whether 64-bit mode is on, and the jax, jaxlib and autontk
  versions.

Parameter *values* and closed-over constant values are not part of it: they
do not change which plan is fastest. The same model built in two processes
gives the same signature; a change of shape, dtype, activation, layer or
option gives a different one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any

import jax
import jaxlib
import numpy as np

from autontk import _xla_options
from autontk._kwargs import (is_array_leaf, merge_static, partition,
                              split_params)
from autontk._options import NtkOptions, effective_precision
from autontk._problem import is_differentiable
from autontk._types import PyTree
from autontk._version import __version__

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+|0x[0-9a-fA-F]{6,}")


@dataclasses.dataclass(frozen=True)
class Signature:
  """A model signature.

  Attributes:
    digest: SHA-256 hex digest of everything listed in the module docstring.
    parts: a JSON-compatible summary of what went into the digest, for
      humans (``autontk cache show``); the jaxpr itself is not repeated.
  """

  digest: str
  parts: dict[str, Any]

  @property
  def short(self) -> str:
    """The first 12 hex digits, enough to name a signature on the CLI."""
    return self.digest[:12]

  def __str__(self) -> str:
    return self.digest


def _is_array(v: Any) -> bool:
  return is_array_leaf(v) or isinstance(v, jax.ShapeDtypeStruct)


def _abstract(v: Any) -> Any:
  if isinstance(v, jax.ShapeDtypeStruct):
    return v
  dtype = getattr(v, "dtype", None)
  return jax.ShapeDtypeStruct(np.shape(v), dtype if dtype is not None
                              else jax.numpy.result_type(v))


def _describe_tree(tree: PyTree) -> dict[str, Any]:
  leaves, treedef = jax.tree.flatten(tree)
  return {"tree": _strip(str(treedef)),
          "leaves": [_describe_leaf(v) for v in leaves]}


def _describe_leaf(v: Any) -> Any:
  if _is_array(v) or hasattr(v, "shape") and hasattr(v, "dtype"):
    a = _abstract(v)
    return f"{a.dtype}{list(a.shape)}"
  return _value_repr(v)


def _value_repr(v: Any) -> str:
  if v is None or isinstance(v, (bool, int, float, str, bytes)):
    return repr(v)
  if isinstance(v, (tuple, list)):
    return type(v).__name__ + "(" + ",".join(_value_repr(x) for x in v) + ")"
  name = getattr(v, "__qualname__", None) or type(v).__qualname__
  module = getattr(v, "__module__", None) or type(v).__module__
  return f"{module}.{name}:" + _strip(repr(v))


def _strip(text: str) -> str:
  return _ADDRESS.sub("", text)


def canonical_jaxpr(f, params: PyTree, x: PyTree,
                    kwargs: dict[str, Any]) -> str:
  """The printed jaxpr of ``f(params, x, **kwargs)`` on abstract inputs.

  Array leaves (of params, x and kwargs) become abstract arguments; other
  kwargs, and the Python constants among the params (see
  :func:`autontk._kwargs.is_static_param`), are closed over as Python
  values. Object addresses are removed.
  """
  kw_dyn, kw_static = partition(kwargs, _is_array)
  dynamic = [_abstract(v) for v in kw_dyn]
  p_dyn, p_static = split_params(params)

  def apply(p, xx, dyn):
    return f(merge_static(p, p_static), xx, **merge_static(dyn, kw_static))

  abstract = jax.tree.map(_abstract, (p_dyn, x))
  jaxpr = jax.make_jaxpr(apply)(abstract[0], abstract[1], dynamic)
  return _strip(str(jaxpr))


def environment() -> dict[str, Any]:
  """Backend, device kind and library versions that enter every signature."""
  device = jax.devices()[0]
  return {
      "backend": jax.default_backend(),
      "device_kind": device.device_kind,
      "device_count": jax.device_count(),
      "x64": bool(jax.config.jax_enable_x64),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "autontk": __version__,
      # Plans chosen or timed under other XLA options ran other kernels.
      "xla_options": sorted((_xla_options.compiler_options() or {}).items()),
  }


def model_signature(f: Any, x1: PyTree, x2: PyTree | None, params: PyTree,
                    kwargs: dict[str, Any] | None = None, *,
                    extra: dict[str, Any] | None = None,
                    **options: Any) -> Signature:
  """Signature of one NTK call ``ntk(x1, x2, params, **kwargs)``.

  The NTK options are keyed as :class:`~autontk.NtkFn` holds them (through
  :meth:`~autontk._options.NtkOptions.of`), so two spellings of one option
  (``trace_axes=-1`` and ``(-1,)``, or an NtkFn built with either) give one
  signature.

  Args:
    f: the network ``f(params, x, **kwargs)``, or an :class:`autontk.NtkFn`
      (whose NTK options are then used).
    x1: first batch of inputs (arrays or ``jax.ShapeDtypeStruct``), e.g.
      shape ``(N1, ...)``.
    x2: second batch, or ``None``.
    params: the parameters (arrays or ``ShapeDtypeStruct``).
    kwargs: keyword arguments of ``f``.
    extra: anything else the cached choice depends on, as a JSON-compatible
      dict (e.g. non-default planner options); omitted when ``None``.
    **options: the NTK options of :func:`autontk.ntk_fn` by name
      (``trace_axes``, ``diagonal_axes``, ``vmap_axes``, ``wrt``,
      ``groups``, ``pseudo_axes``, ``precision``), for a plain ``f``.

  Returns:
    A :class:`Signature`.

  >>> import jax.numpy as jnp, autontk
  >>> from autontk.plancache import model_signature
  >>> f = lambda p, x: jnp.tanh(x @ p)
  >>> s = model_signature(f, jnp.ones((4, 3)), None, jnp.ones((3, 2)))
  >>> len(s.digest)
  64
  """
  kwargs = dict(kwargs or {})
  ntk_options = getattr(f, "options", None)
  if isinstance(ntk_options, NtkOptions) and hasattr(f, "f"):
    if options:
      raise TypeError(f"NTK options {sorted(options)} given with an NtkFn, "
                      "which has its own.")
    f = f.f
  else:
    ntk_options = NtkOptions.of(**options)
  if not callable(f):
    raise TypeError(f"`f` must be callable as f(params, x, **kwargs); got "
                    f"{type(f).__name__}.")
  # The model is traced with x1's side of the kwargs; x2-only kwargs (the
  # second half of a 2-tuple) enter through `kwargs` below.
  kw1 = {k: (v[0] if isinstance(v, tuple) and len(v) == 2 and k != "rng"
             else v) for k, v in kwargs.items()}
  jaxpr = canonical_jaxpr(f, params, x1, kw1)
  parts = {
      "model": getattr(f, "__qualname__", type(f).__qualname__),
      "x1": _describe_tree(x1),
      "x2": None if x2 is None else _describe_tree(x2),
      "params": _describe_tree(params),
      "kwargs": {k: _describe_tree(v) for k, v in sorted(kwargs.items())},
      "trace_axes": _value_repr(ntk_options.trace_axes),
      "diagonal_axes": _value_repr(ntk_options.diagonal_axes),
      "vmap_axes": _value_repr(ntk_options.vmap_axes),
      **_kernel_parts(params, ntk_options),
      **environment(),
  }
  if extra:
    parts["extra"] = extra
  keyed = dict(parts)
  keyed.pop("model")  # a name is not the computation; the jaxpr is
  payload = json.dumps({"jaxpr": jaxpr, **keyed}, sort_keys=True)
  digest = hashlib.sha256(payload.encode()).hexdigest()
  return Signature(digest=digest, parts=parts)


def _kernel_parts(params: PyTree, options: NtkOptions) -> dict[str, Any]:
  """The kernel options that change the computation, when not defaults."""
  out: dict[str, Any] = {}
  selection, pseudo_axes = options.selection, options.pseudo_axes
  if selection is not None:
    mask = tuple(is_differentiable(v) for v in jax.tree.leaves(params))
    out["selection"] = selection.resolve(params, mask).summary()
  if pseudo_axes is not None:
    out["pseudo_axes"] = _value_repr(tuple(pseudo_axes))
  used = effective_precision(options.precision)
  if used != "default":
    out["precision"] = used
  return out
