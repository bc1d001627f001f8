"""One NTK evaluation, validated: the model, its inputs and the axes layout.

:func:`build` turns a user call ``ntk(x1, x2, params, **kwargs)`` into an
:class:`NtkProblem` that every method consumes. It checks the arguments (clear
errors that name the argument), splits the kwargs, evaluates the output shapes
abstractly and separates the differentiable parameters (floating-point leaves)
from constant ones (integer, boolean and PRNG-key leaves, which have no
tangent space and are held fixed, as ``jax.grad`` would refuse them).

Everything here works on concrete arrays and on tracers alike, so methods can
be traced under ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autontk import _axes, _kwargs, _vmap
from autontk._options import NtkOptions, effective_precision
from autontk._types import ApplyFn, PyTree
from autontk.pseudo import PseudoOutputs
from autontk.selection import ResolvedSelection


def is_differentiable(leaf: Any) -> bool:
  if _kwargs.is_static_param(leaf):
    return False
  dtype = getattr(leaf, "dtype", None)
  if dtype is None:
    dtype = np.result_type(leaf)
  return bool(jnp.issubdtype(dtype, jnp.floating))


@dataclasses.dataclass
class NtkProblem:
  """A validated NTK evaluation.

  Attributes:
    f: the network ``f(params, x, **kwargs)``.
    params: all parameters, as given.
    x1, x2: the inputs (``x2 is x1`` when the user passed ``x2=None``).
    kwargs1, kwargs2: ``f``'s kwargs for each side, after splitting.
    same_inputs: the user passed ``x2=None`` (work on x1 may be reused).
    out1, out2: output leaves of f(x1), f(x2) as ``ShapeDtypeStruct``.
    out_treedef: the output pytree structure.
    axes: per output leaf, the canonical trace/diagonal axes.
    vmap: the canonical ``vmap_axes``, or ``None``.
    theta: the differentiable (floating, selected by ``wrt``) parameter
      leaves, flat.
    selection: the resolved ``wrt``/``groups`` (``None``: every floating
      leaf, one kernel).
    precision: the ``precision`` option the kernel is traced under.

  With ``groups``, a method returns one kernel per group and output leaf,
  group-major (:meth:`kernel_slots`), and :meth:`unflatten_kernels` makes
  them ``{group: kernel pytree}``.
  """

  f: ApplyFn
  params: PyTree
  x1: PyTree
  x2: PyTree
  kwargs1: dict[str, Any]
  kwargs2: dict[str, Any]
  same_inputs: bool
  out1: list[jax.ShapeDtypeStruct]
  out2: list[jax.ShapeDtypeStruct]
  out_treedef: Any
  axes: tuple[_axes.LeafAxes, ...]
  vmap: _vmap.VmapSpec | None
  theta: tuple[jax.Array, ...]
  _param_leaves: list[Any]
  _param_treedef: Any
  _diff_mask: tuple[bool, ...]
  selection: ResolvedSelection | None = None
  precision: str | None = None

  @classmethod
  def from_parts(cls, param_leaves: Sequence[Any], param_treedef: Any,
                 diff_mask: Sequence[bool], **fields: Any) -> "NtkProblem":
    """A problem whose parts are already validated (one block of a
    validated call): ``params`` and ``theta`` come from the params leaves,
    their structure and the differentiated-leaf mask; ``fields`` are the
    remaining fields."""
    leaves = list(param_leaves)
    theta = tuple(v for d, v in zip(diff_mask, leaves) if d)
    return cls(params=jax.tree.unflatten(param_treedef, leaves), theta=theta,
               _param_leaves=leaves, _param_treedef=param_treedef,
               _diff_mask=tuple(diff_mask), **fields)

  # Parameters ---------------------------------------------------------------

  @property
  def param_treedef(self) -> Any:
    return self._param_treedef

  @property
  def diff_mask(self) -> tuple[bool, ...]:
    """Per params leaf: differentiated (floating and selected by ``wrt``)."""
    return self._diff_mask

  def rebuild(self, theta: Sequence[jax.Array]) -> PyTree:
    """Full params pytree with the differentiable leaves replaced."""
    it = iter(theta)
    leaves = [next(it) if d else leaf
              for d, leaf in zip(self._diff_mask, self._param_leaves)]
    return jax.tree.unflatten(self._param_treedef, leaves)

  @property
  def n_params(self) -> int:
    return sum(math.prod(t.shape) for t in self.theta)

  def describe(self) -> str:
    """Parameters, selection, groups, pseudo-NTK and precision, in words
    (the cost report's call line)."""
    total = sum(math.prod(np.shape(v)) for v, d in
                zip(self._param_leaves, self._float_mask()) if d)
    text = f"{self.n_params} params"
    if self.n_params != total:
      text += f" of {total} (wrt {len(self.theta)} leaves)"
    if self.group_names is not None:
      text += f"; {len(self.group_names)} groups"
    if isinstance(self.f, PseudoOutputs):
      text += f"; pseudo-NTK over output axes {self.f.axes}"
    return text + f"; precision {effective_precision(self.precision)}"

  def _float_mask(self) -> list[bool]:
    return [is_differentiable(v) for v in self._param_leaves]

  # Groups -------------------------------------------------------------------

  @property
  def group_names(self) -> tuple[str, ...] | None:
    """The groups (sorted), or ``None`` for one ungrouped kernel."""
    return None if self.selection is None else self.selection.group_names

  @property
  def n_groups(self) -> int:
    return 1 if self.group_names is None else len(self.group_names)

  def group_members(self) -> list[list[int]]:
    """Per group, the indices of its leaves in ``theta``."""
    if self.group_names is None:
      return [list(range(len(self.theta)))]
    out: list[list[int]] = [[] for _ in self.group_names]
    for j, g in enumerate(self.selection.leaf_groups):
      out[g].append(j)
    return out

  def kernel_slots(self) -> list[tuple[int, int]]:
    """``(group, output leaf)`` of every kernel a method returns, in order."""
    return [(g, i) for g in range(self.n_groups)
            for i in range(len(self.out1))]

  def restrict(self, group: int) -> "NtkProblem":
    """The ungrouped problem of one group: its leaves differentiated, every
    other leaf constant."""
    keep = set(self.group_members()[group])
    it = iter(range(len(self.theta)))
    mask = tuple(d and next(it) in keep for d in self._diff_mask)
    theta = tuple(t for j, t in enumerate(self.theta) if j in keep)
    return dataclasses.replace(self, theta=theta, _diff_mask=mask,
                               selection=None)

  def unflatten_kernels(self, kernels: Sequence[jax.Array]) -> PyTree:
    """Method output -> the kernel pytree (``{group: kernels}`` if grouped).

    A grouped result is a dict with sorted keys, so its leaves, as
    ``jax.tree.leaves`` lists them, are ``kernels`` in order.
    """
    if self.group_names is None:
      return jax.tree.unflatten(self.out_treedef, list(kernels))
    n = len(self.out1)
    return {name: jax.tree.unflatten(self.out_treedef,
                                     list(kernels[g * n:(g + 1) * n]))
            for g, name in enumerate(self.group_names)}

  # Forward functions --------------------------------------------------------

  def side(self, which: int) -> tuple[PyTree, dict[str, Any]]:
    return ((self.x1, self.kwargs1) if which == 1 else
            (self.x2, self.kwargs2))

  def fn(self, which: int) -> Callable[[tuple[jax.Array, ...]],
                                       list[jax.Array]]:
    """``theta -> output leaves`` of f on the whole batch x1 or x2."""
    x, kw = self.side(which)

    def apply(theta):
      return jax.tree.leaves(self.f(self.rebuild(theta), x, **kw))

    return apply

  def example_fn(self, which: int):
    """Per-example form, for use under ``vmap_axes``.

    Returns:
      ``(g, x_leaves, kw, in_axes)`` where ``g(theta, x_leaves_i, kw_i)``
      gives the output leaves of one example (batch axes removed), and
      ``jax.vmap(g, in_axes=(None, *in_axes))(theta, x_leaves, kw)`` would
      recompute the whole batch with the batch axis moved to 0.
    """
    assert self.vmap is not None
    x, kw = self.side(which)
    x_leaves, x_td = jax.tree.flatten(x)
    g0 = _vmap.per_example(self.f, self.vmap, x_td, self.out_treedef)

    def g(theta, x_leaves_i, kw_i):
      return g0(self.rebuild(theta), x_leaves_i, kw_i)

    return g, x_leaves, kw, _vmap.in_axes(self.vmap, kw)

  def batch_size(self, which: int) -> int:
    assert self.vmap is not None
    leaf = (self.out1 if which == 1 else self.out2)[0]
    return leaf.shape[self.vmap.out_axes[0]]

  # Results ------------------------------------------------------------------

  def kernel_shape(self, i: int) -> tuple[int, ...]:
    return self.axes[i].kernel_shape(self.out1[i].shape, self.out2[i].shape)

  def kernel_dtype(self, i: int) -> Any:
    dts = [self.out1[i].dtype] + [t.dtype for t in self.theta]
    return jnp.result_type(*dts)

  def zeros(self) -> list[jax.Array]:
    return [jnp.zeros(self.kernel_shape(i), self.kernel_dtype(i))
            for _, i in self.kernel_slots()]


def _check_inputs(x1: PyTree, x2: PyTree, vmap_axes: Any) -> str | None:
  """Raises on x1/x2 that cannot form a kernel.

  Returns a description of a shape difference outside the assumed batch
  axis (axis 0) when ``vmap_axes`` is ``None``: such inputs are only an
  error if ``f`` rejects them, since the batch axis may be another one.
  """
  l1, t1 = jax.tree.flatten(x1)
  l2, t2 = jax.tree.flatten(x2)
  if t1 != t2:
    raise ValueError(
        "`x1` and `x2` must have the same pytree structure; got "
        f"{t1} and {t2}.")
  if not l1:
    raise ValueError("`x1` has no array leaves.")
  in_axes: list[Any] = [0] * len(l1)
  if vmap_axes is not None:
    x_axis = (vmap_axes[0] if isinstance(vmap_axes, tuple) and
              len(vmap_axes) == 3 else vmap_axes)
    try:
      in_axes = list(_vmap._flat_axes(x_axis, x1, "x"))  # noqa: SLF001
    except (TypeError, ValueError):
      pass  # reported precisely by _vmap.canonicalize
  for i, (a, b, ax) in enumerate(zip(l1, l2, in_axes)):
    sa, sb = np.shape(a), np.shape(b)
    if len(sa) != len(sb):
      raise ValueError(
          f"`x2` leaf {i} has rank {len(sb)} but the matching `x1` leaf has "
          f"rank {len(sa)} (shapes {sb} and {sa}).")
    if ax is None:
      same = sa == sb
    else:
      ax = ax % max(len(sa), 1)
      same = (sa[:ax] + sa[ax + 1:]) == (sb[:ax] + sb[ax + 1:])
    if not same:
      if vmap_axes is None:
        where = f"axis {ax}"
      elif ax is None:
        where = "`vmap_axes` gives this leaf none"
      else:
        where = f"axis {ax}, as `vmap_axes` says"
      msg = (f"`x1` and `x2` leaf {i} differ outside the batch axis "
             f"({where}): shapes {sa} and {sb}.")
      if vmap_axes is not None:
        raise ValueError(msg)
      return msg
  return None


def _eval_out(f: ApplyFn, params: PyTree, x: PyTree, kw: dict[str, Any],
              side: str):
  # Python constants among the params (an int in an equinox module) stay
  # themselves: f may branch or loop on them.
  p_dyn, p_static = _kwargs.split_params(params)
  try:
    out = jax.eval_shape(
        lambda p, xx: f(_kwargs.merge_static(p, p_static), xx, **kw), p_dyn, x)
  except Exception as e:  # noqa: BLE001 - re-raised with context
    e.add_note(f"(autontk: raised while evaluating f(params, {side}, "
               f"**kwargs) to find the output shapes.)")
    raise
  leaves, td = jax.tree.flatten(out)
  if not leaves:
    raise ValueError(f"f(params, {side}) returned no arrays.")
  for i, leaf in enumerate(leaves):
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      raise TypeError(
          f"f(params, {side}) output leaf {i} has dtype {leaf.dtype}; the NTK "
          f"needs floating-point outputs.")
  return leaves, td


_NUMBERS = (bool, int, float, complex, np.generic)


def check_inputs_are_arrays(x1: PyTree, x2: PyTree | None) -> None:
  """Raises a ``TypeError`` naming the argument when an input leaf is not
  an array (cheap: done before planning, which traces ``f``)."""
  _check_array_leaves(x1, "x1")
  if x2 is not None:
    _check_array_leaves(x2, "x2")


def _check_array_leaves(x: PyTree, name: str) -> None:
  """Inputs are pytrees of arrays (Python numbers are accepted as 0-d)."""
  for i, leaf in enumerate(jax.tree.leaves(x)):
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")) and (
        not isinstance(leaf, _NUMBERS)):
      shown = repr(leaf)
      shown = shown if len(shown) <= 40 else shown[:37] + "..."
      raise TypeError(
          f"`{name}` leaf {i} is a {type(leaf).__name__} ({shown}); inputs "
          f"must be arrays (or pytrees of arrays).")


def build(f: ApplyFn, options: NtkOptions, x1: PyTree, x2: PyTree | None,
          params: PyTree, kwargs: dict[str, Any]) -> NtkProblem:
  """Validates a call and returns its :class:`NtkProblem`."""
  if not callable(f):
    raise TypeError(f"`f` must be callable as f(params, x, **kwargs); got "
                    f"{type(f).__name__}.")
  if options.pseudo_axes is not None:
    f = PseudoOutputs(f, options.pseudo_axes)
  same = x2 is None
  mismatch = None
  check_inputs_are_arrays(x1, x2)
  if same:
    if not jax.tree.leaves(x1):
      raise ValueError("`x1` has no array leaves.")
    kw1, _ = _kwargs.split_kwargs(kwargs, x1, None)
    kw2 = kw1
    x2 = x1
  else:
    mismatch = _check_inputs(x1, x2, options.vmap_axes)
    kw1, kw2 = _kwargs.split_kwargs(kwargs, x1, x2)

  p_leaves, p_td = jax.tree.flatten(params)
  mask = tuple(is_differentiable(leaf) for leaf in p_leaves)
  for i, leaf in enumerate(p_leaves):
    if not _kwargs.is_static_param(leaf) and jnp.iscomplexobj(leaf):
      raise TypeError(f"`params` leaf {i} is complex ({leaf.dtype}); autontk "
                      "supports real floating-point parameters only.")
  resolved = None
  if options.selection is not None:
    resolved = options.selection.resolve(params, mask)
    mask = resolved.mask
  theta = tuple(jnp.asarray(leaf) for d, leaf in zip(mask, p_leaves) if d)

  out1, td1 = _eval_out(f, params, x1, kw1, "x1")
  if same:
    out2, td2 = out1, td1
  else:
    try:
      out2, td2 = _eval_out(f, params, x2, kw2, "x2")
    except Exception as e:  # noqa: BLE001 - explained by the mismatch
      if mismatch is None:
        raise
      raise ValueError(f"{mismatch} f(params, x2) fails on them ({e}); "
                       "without `vmap_axes` the batch axis is taken to be "
                       "axis 0.") from e
    if td1 != td2:
      raise ValueError(
          f"f(params, x1) and f(params, x2) return different pytree "
          f"structures: {td1} and {td2}.")

  # `vmap_axes` first: a wrong batch axis is reported as such rather than as
  # a size mismatch of a traced or diagonal axis.
  vspec = None
  if options.vmap_axes is not None:
    vspec = _vmap.canonicalize(options.vmap_axes, x1,
                               jax.tree.unflatten(td1, out1), kw1)
    _vmap.batch_size(vspec, x1, out1, kw1, "x1")
    if not same:
      _vmap.batch_size(vspec, x2, out2, kw2, "x2")

  axes = tuple(
      _axes.leaf_axes(options.trace_axes, options.diagonal_axes, o1.shape,
                      o2.shape, leaf_name=_leaf_name(i, len(out1), o1.shape))
      for i, (o1, o2) in enumerate(zip(out1, out2)))

  problem = NtkProblem(
      f=f, params=params, x1=x1, x2=x2, kwargs1=kw1, kwargs2=kw2,
      same_inputs=same, out1=out1, out2=out2, out_treedef=td1, axes=axes,
      vmap=vspec, theta=theta, _param_leaves=p_leaves, _param_treedef=p_td,
      _diff_mask=mask, selection=resolved, precision=options.precision)
  if vspec is not None:
    _check_per_example(problem)
  return problem


def _check_per_example(problem: NtkProblem) -> None:
  """f on one example must give the batch output without its batch axis."""
  g, x_leaves, kw, (x_in, kw_in) = problem.example_fn(1)

  def first(leaves, axes):
    return [v if a is None else jax.lax.index_in_dim(v, 0, a, keepdims=False)
            for v, a in zip(leaves, axes)]

  x0 = first(x_leaves, x_in)
  kw0 = {k: (v if kw_in[k] is None else jax.tree.map(
      lambda leaf, a: jax.lax.index_in_dim(leaf, 0, a, keepdims=False),
      v, kw_in[k])) for k, v in kw.items()}
  try:
    outs = jax.eval_shape(lambda t: g(t, x0, kw0), problem.theta)
  except Exception as e:  # noqa: BLE001 - re-raised with context
    e.add_note("(autontk: raised while evaluating f on a single example as "
               "`vmap_axes` describes it; check `vmap_axes`, or pass "
               "vmap_axes=None.)")
    raise
  for i, (o, full, a) in enumerate(zip(outs, problem.out1,
                                       problem.vmap.out_axes)):
    want = tuple(s for j, s in enumerate(full.shape) if j != a)
    if tuple(o.shape) != want:
      raise ValueError(
          f"`vmap_axes` does not fit f: on one example, output leaf {i} has "
          f"shape {tuple(o.shape)}, but removing batch axis {a} from the "
          f"batch output {tuple(full.shape)} gives {want}.")


def _leaf_name(i: int, n: int, shape: Sequence[int]) -> str:
  if n == 1:
    return f"the output (shape {tuple(shape)})"
  return f"output leaf {i} (shape {tuple(shape)})"
