"""What a diagnostic is asked about, as one :class:`Kernel` per group.

Every diagnostic takes a kernel in one of three forms:

* a dense array: ``(M, M)``, or an untraced ``(N, N, O, O)`` kernel read as
  the ``(N·O, N·O)`` matrix (index ``n·O + o``);
* a kernel operator: anything with ``shape``, ``dtype``, ``matmat``,
  ``trace`` and ``to_dense`` (:func:`autontk.ntk_operator`,
  :class:`autontk.operator.MatrixOperator`);
* a network ``f`` with ``x=`` and ``params=`` (and ``wrt=``, ``groups=``,
  ``trace_axes=``): its NTK, formed by :func:`autontk.ntk_fn` on the dense
  route or applied by :func:`autontk.ntk_operator` on the matrix-free one;
  or a kernel function from :func:`autontk.ntk_fn` with ``x=`` and
  ``params=``, which brings its own options (the dense route calls it).

A ``dict`` of arrays or operators is read as one kernel per group; a
:class:`Kernel` (what :func:`kernels` returns) is used as it is, so several
diagnostics can share one formed kernel.
:func:`kernels` returns ``{group: Kernel}`` (the key ``None`` when there are
no groups).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from autontk import adapters
from autontk._api import ntk_fn
from autontk._kernel_fn import NtkFn
from autontk.costmodel.hlo import read_cost_analysis
from autontk.operator import ntk_operator
from autontk.route import Pricing
from autontk.selection import ParamSelection

APPLY_FORWARDS = 5
"""One column of ``Θ V`` through NTK-vector products costs about this many
forward passes of the network over the ``N`` examples (a VJP and a JVP),
times the size of the traced output axes."""


def as_matrix(k: Any) -> np.ndarray:
  """``(M, M)`` float64 from an ``(M, M)`` or untraced ``(N, N, O, O)``
  kernel array."""
  k = np.asarray(k, dtype=np.float64)
  if k.ndim == 4 and k.shape[0] == k.shape[1] and k.shape[2] == k.shape[3]:
    n, _, o, _ = k.shape
    return k.transpose(0, 2, 1, 3).reshape(n * o, n * o)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(f"a kernel array must be (M, M) or (N, N, O, O); got "
                     f"shape {k.shape}.")
  return k


def is_operator(k: Any) -> bool:
  return all(hasattr(k, a) for a in ("shape", "matmat", "trace",
                                     "to_dense"))


class Kernel:
  """One kernel as the diagnostics use it: products in float64 on the host,
  the exact trace, the dense matrix on demand, and its :class:`Pricing`.

  Args:
    pricing: its prices (``pricing.m`` is its size).
    operator: a callable returning its kernel operator (built on first
      use: the dense route of a network never builds one).
    dense: a callable returning the dense kernel, when something cheaper
      than ``operator().to_dense()`` forms it.
  """

  def __init__(self, pricing: Pricing,
               operator: Callable[[], Any] | None = None,
               dense: Callable[[], Any] | None = None):
    self.pricing, self.m = pricing, pricing.m
    self._operator_fn, self._dense_fn = operator, dense
    self._op: Any = None
    self._dense: np.ndarray | None = None
    self._eigvals: np.ndarray | None = None

  @property
  def op(self) -> Any:
    """The kernel operator (``None`` for a kernel given as an array)."""
    if self._op is None and self._operator_fn is not None:
      self._op = self._operator_fn()
    return self._op

  @property
  def dtype(self) -> np.dtype:
    """The dtype products are computed in (float64 for an array)."""
    if self.op is None:
      return np.dtype(np.float64)
    return jax.dtypes.canonicalize_dtype(getattr(self.op, "dtype",
                                                 jnp.float32))

  @property
  def eps(self) -> float:
    """The relative rounding of one product."""
    return float(np.finfo(self.dtype).eps)

  def matmat(self, v: np.ndarray) -> np.ndarray:
    """``Θ V`` for ``V (M, R)`` float64."""
    if self.op is None:
      return self.dense() @ v
    return np.asarray(self.op.matmat(jnp.asarray(v, self.dtype)),
                      np.float64)

  def trace(self) -> float:
    """The exact trace."""
    if self._dense is not None or self.op is None:
      return float(np.trace(self.dense()))
    return float(self.op.trace())

  def dense(self) -> np.ndarray:
    """The ``(M, M)`` matrix, float64 (formed once)."""
    if self._dense is None:
      raw = self._dense_fn() if self._dense_fn else self.op.to_dense()
      self._dense = as_matrix(raw)
    return self._dense

  def eigvalsh(self) -> np.ndarray:
    """All eigenvalues of the dense matrix, ascending (computed once)."""
    if self._eigvals is None:
      self._eigvals = np.linalg.eigvalsh(self.dense())
    return self._eigvals


def from_array(k: Any) -> Kernel:
  m = as_matrix(k)
  return Kernel(Pricing(m.shape[0], 2.0 * m.shape[0] ** 2, 0.0, True,
                        "given as an array"), dense=lambda: m)


def from_operator(op: Any) -> Kernel:
  m = int(op.shape[0])
  apply = getattr(op, "matmat_flops", None)
  note = "operator priced by its matmat_flops"
  if apply is None:
    apply, note = 2.0 * m ** 2, "operator priced as a dense product (2M²)"
  return Kernel(Pricing(m, float(apply), m * float(apply), False, note),
                operator=lambda: op)


def kernels(kernel: Any, *, x: Any = None, params: Any = None,
            groups: Any = None, wrt: Any = None, trace_axes: Any = (-1,),
            kwargs: Mapping[str, Any] | None = None
            ) -> dict[str | None, Kernel]:
  """``{group: Kernel}`` for any accepted form of ``kernel``.

  Pass the result to several diagnostics so that each kernel is formed (or
  its operator built) once.

  Args:
    kernel: a dense array, a kernel operator, a dict of them per group, a
      :class:`Kernel`, a network ``f``, or an :class:`~autontk.NtkFn`.
    x: the network's inputs.
    params: its parameters.
    groups: its parameter groups, as for :func:`autontk.ntk_fn`.
    wrt: the parameters differentiated, as for :func:`autontk.ntk_fn`.
    trace_axes: the traced output axes, as for :func:`autontk.ntk_fn`.
    kwargs: ``f``'s keyword arguments.

  Returns:
    ``{group: Kernel}``, the key ``None`` without groups.

  >>> import numpy as np
  >>> kernels(np.eye(3))[None].m
  3
  """
  if is_operator(kernel) or hasattr(kernel, "ndim") or isinstance(
      kernel, (Kernel, dict, list, tuple)):
    if x is not None or params is not None or wrt is not None or (
        groups is not None):
      raise ValueError("x, params, wrt and groups apply to a network f; a "
                       "kernel array or operator is used as it is (pass "
                       "one per group as a dict).")
    if isinstance(kernel, dict):
      return {None if g is None else str(g): _one(k)
              for g, k in kernel.items()}
    return {None: _one(kernel)}
  if not callable(kernel):
    raise TypeError(f"expected a kernel array, a kernel operator, a dict of "
                    f"them, or a network f; got {type(kernel).__name__}.")
  if x is None or params is None:
    raise ValueError("a network f needs x= and params=.")
  if isinstance(kernel, NtkFn):
    return _from_ntk_fn(kernel, x, params, groups, wrt, trace_axes,
                        dict(kwargs or {}))
  return _model_kernels(kernel, x, params, ParamSelection.make(wrt, groups),
                        {"trace_axes": trace_axes}, dict(kwargs or {}))


def per_group(kernel: Any, source: dict[str, Any],
              fn: Callable[[Kernel], Any]) -> Any:
  """``fn`` on each group's :class:`Kernel`: its result, or ``{group:
  result}`` with groups. ``source`` holds the keywords of :func:`kernels`."""
  unknown = set(source) - {"x", "params", "groups", "wrt", "trace_axes",
                           "kwargs"}
  if unknown:
    raise TypeError(f"unexpected keyword arguments {sorted(unknown)}.")
  out = {g: fn(k) for g, k in kernels(kernel, **source).items()}
  return out[None] if list(out) == [None] else out


def _one(k: Any) -> Kernel:
  if isinstance(k, Kernel):
    return k
  return from_operator(k) if is_operator(k) else from_array(k)


def _from_ntk_fn(ntk: NtkFn, x, params, groups, wrt, trace_axes,
                 kwargs) -> dict[str | None, Kernel]:
  """An :class:`~autontk.NtkFn` brings its own options: the dense route
  calls it (its plan, chunking and precision), the operator takes its
  network, axes and selection."""
  o = ntk.options
  if groups is not None or wrt is not None or trace_axes != (-1,):
    raise ValueError("an NtkFn brings its own wrt, groups and trace_axes; "
                     "set them in autontk.ntk_fn.")
  if o.diagonal_axes:
    raise ValueError("diagnostics need the full kernel: an NtkFn with "
                     "diagonal_axes gives only its diagonal.")
  op_options = dict(trace_axes=o.trace_axes, vmap_axes=o.vmap_axes,
                    pseudo_axes=o.pseudo_axes, precision=o.precision)
  return _model_kernels(ntk.f, x, params, o.selection, op_options, kwargs,
                        dense_fn=ntk)


def _model_kernels(f, x, params, selection: ParamSelection | None,
                   op_options: dict[str, Any], kwargs,
                   dense_fn: Any = None) -> dict[str | None, Kernel]:
  """One :class:`Kernel` per group of the network ``f`` (dense by
  ``dense_fn``, default :func:`autontk.ntk_fn`; products by
  :func:`autontk.ntk_operator`, one per group)."""
  grouped = selection is not None and selection.groups is not None
  dense_fn = dense_fn or ntk_fn(
      f, trace_axes=op_options["trace_axes"],
      wrt=selection.wrt if selection else None,
      groups=selection.groups if selection else None)
  dense_all: dict[str | None, Any] = {}

  def dense(name):
    if not dense_all:
      k = dense_fn(x, None, params, **kwargs)
      dense_all.update(k if grouped else {None: k})
    return dense_all[name]

  apply = adapters.apply_fn(f)
  pricing = _model_pricing(apply, x, params, kwargs,
                           op_options["trace_axes"])
  out = {}
  for name, mask in _masks(params, selection).items():
    op = lambda mask=mask: ntk_operator(f, x, params, wrt=mask, **op_options,
                                        **kwargs)
    out[name] = Kernel(pricing, op, dense=lambda n=name: dense(n))
  return out


def _masks(params, selection: ParamSelection | None) -> dict[str | None, Any]:
  """``{group: wrt}`` for the operators: per group a boolean pytree of
  ``params``' leaves (that group's leaves among the selected); ``{None:
  mask}`` without groups (``{None: None}`` without a selection)."""
  if selection is None:
    return {None: None}
  leaves, treedef = jax.tree.flatten(params)
  diff = [jnp.issubdtype(jnp.result_type(v), jnp.floating) for v in leaves]
  sel = selection.resolve(params, diff)
  if sel.group_names is None:
    return {None: jax.tree.unflatten(treedef, list(sel.mask))}
  chosen = [i for i, m in enumerate(sel.mask) if m]
  masks = {}
  for g, name in enumerate(sel.group_names):
    flags = [False] * len(leaves)
    for i, lg in zip(chosen, sel.leaf_groups):
      flags[i] = lg == g
    masks[name] = jax.tree.unflatten(treedef, flags)
  return masks


def _model_pricing(apply, x, params, kwargs, trace_axes) -> Pricing:
  """Prices from one forward pass's FLOPs ``F`` (XLA's cost analysis): a
  column ``APPLY_FORWARDS · F · T`` (``T``: the traced output size); the
  dense kernel as the Jacobian contraction, ``3·F·O + 2·M²·T·P`` (``O``:
  the output size per example, ``P``: parameters)."""
  lowered = jax.jit(lambda p: apply(p, x, **kwargs)).lower(params)
  fwd = read_cost_analysis(lowered.cost_analysis()).get("flops") or 0.0
  leaves = jax.tree.leaves(jax.eval_shape(lambda p: apply(p, x, **kwargs),
                                          params))
  if len(leaves) != 1:
    raise ValueError(f"diagnostics take a network with one output array; f "
                     f"returns {len(leaves)} (wrap it to return the one to "
                     f"diagnose).")
  out = leaves[0]
  n, per_example = out.shape[0], int(np.prod(out.shape[1:]))
  axes = (trace_axes,) if isinstance(trace_axes, int) else tuple(trace_axes)
  traced = int(np.prod([out.shape[a] for a in axes])) if axes else 1
  m = n * per_example // traced
  p = sum(int(np.size(v)) for v in jax.tree.leaves(params))
  apply_flops = APPLY_FORWARDS * fwd * traced
  kernel_flops = 3.0 * fwd * per_example + 2.0 * m ** 2 * traced * p
  return Pricing(m, apply_flops, kernel_flops, False,
                 f"network priced from {fwd:.3g} forward FLOPs")
