"""``vmap_axes``: canonical form, validation and per-example evaluation.

``vmap_axes`` certifies that ``f(params, x, **kw)`` is the concatenation along
``out_axes`` of ``f`` applied to single examples sliced along ``in_axes`` (of
``x``) and ``kwargs_axes`` (of the named kwargs). It is a performance hint:
with it, Jacobians are computed per example; it never changes the kernel of
a function that satisfies it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autontk._types import PyTree


def _is_none(a: Any) -> bool:
  return a is None


@dataclasses.dataclass(frozen=True)
class VmapSpec:
  """Canonical ``vmap_axes``.

  Attributes:
    x_axes: one non-negative int (or ``None``: not batched) per leaf of x, as
      a flat tuple in x's leaf order.
    out_axes: one non-negative int per output leaf (flat, leaf order).
    kw_axes: kwarg name -> flat tuple of axes for that kwarg's leaves.
  """

  x_axes: tuple[int | None, ...]
  out_axes: tuple[int, ...]
  kw_axes: tuple[tuple[str, tuple[int | None, ...]], ...]

  @property
  def kw_axes_dict(self) -> dict[str, tuple[int | None, ...]]:
    return dict(self.kw_axes)


def _flat_axes(axes: Any, tree: PyTree, what: str) -> tuple[int | None, ...]:
  """Broadcasts an int or matches a pytree of axes against ``tree``'s leaves."""
  leaves = jax.tree.leaves(tree)
  if axes is None:
    return (None,) * len(leaves)
  if isinstance(axes, (int, np.integer)) and not isinstance(axes, bool):
    flat = (int(axes),) * len(leaves)
  else:
    try:
      flat = tuple(
          jax.tree.leaves(
              jax.tree.map(lambda a, _: a, axes, tree, is_leaf=_is_none),
              is_leaf=_is_none))
    except (ValueError, TypeError) as e:
      raise ValueError(
          f"`vmap_axes`: the axes given for {what} do not match its pytree "
          f"structure ({jax.tree.structure(tree)}): {axes!r}.") from e
  out = []
  for a, leaf in zip(flat, leaves):
    if a is None:
      out.append(None)
      continue
    if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
      raise TypeError(f"`vmap_axes`: axes for {what} must be ints or None; "
                      f"got {a!r}.")
    nd = np.ndim(leaf) if not hasattr(leaf, "shape") else len(leaf.shape)
    if not -nd <= a < nd:
      raise ValueError(
          f"`vmap_axes`: axis {a} is out of range for a leaf of {what} with "
          f"shape {tuple(np.shape(leaf))}.")
    out.append(int(a) % nd)
  return tuple(out)


def canonicalize(vmap_axes: Any, x: PyTree, out: PyTree,
                 kwargs: dict[str, Any]) -> VmapSpec | None:
  """Canonical :class:`VmapSpec` for ``vmap_axes``, or ``None`` if unset."""
  if vmap_axes is None:
    return None
  if isinstance(vmap_axes, tuple) and len(vmap_axes) == 3:
    x_axis, out_axis, kw_axes = vmap_axes
  else:
    x_axis, out_axis, kw_axes = vmap_axes, vmap_axes, {}
  if kw_axes is None:
    kw_axes = {}
  if isinstance(kw_axes, (int, np.integer)):
    kw_axes = {k: int(kw_axes) for k in kwargs}
  if not isinstance(kw_axes, dict):
    raise TypeError("`vmap_axes`: the kwargs axes (third entry of the triple) "
                    f"must be a dict or an int; got {kw_axes!r}.")
  unknown = set(kw_axes) - set(kwargs)
  if unknown:
    raise ValueError(f"`vmap_axes` names kwargs {sorted(unknown)} that were "
                     f"not passed to the kernel function.")
  x_flat = _flat_axes(x_axis, x, "x")
  out_flat = _flat_axes(out_axis, out, "the output f(params, x)")
  if any(a is None for a in out_flat):
    raise ValueError("`vmap_axes`: every output leaf needs a batch axis; got "
                     f"{out_axis!r}.")
  kw = tuple((k, _flat_axes(kw_axes[k], kwargs[k], f"kwarg `{k}`"))
             for k in sorted(kw_axes))
  if all(a is None for a in x_flat) and all(
      a is None for _, axs in kw for a in axs):
    raise ValueError("`vmap_axes` batches no input: give a batch axis for at "
                     "least one leaf of x (or a kwarg).")
  return VmapSpec(x_flat, out_flat, kw)  # type: ignore[arg-type]


def batch_size(spec: VmapSpec, x: PyTree, out: PyTree,
               kwargs: dict[str, Any], side: str) -> int:
  """The common batch size of x, kwargs and outputs, or a clear error."""
  sizes: dict[str, int] = {}
  for i, (a, leaf) in enumerate(zip(spec.x_axes, jax.tree.leaves(x))):
    if a is not None:
      sizes[f"{side} leaf {i} (shape {tuple(np.shape(leaf))}) axis {a}"] = (
          np.shape(leaf)[a])
  kwd = spec.kw_axes_dict
  for k, axs in kwd.items():
    for i, (a, leaf) in enumerate(zip(axs, jax.tree.leaves(kwargs[k]))):
      if a is not None:
        sizes[f"kwarg `{k}` leaf {i} axis {a}"] = np.shape(leaf)[a]
  for i, (a, leaf) in enumerate(zip(spec.out_axes, jax.tree.leaves(out))):
    sizes[f"output leaf {i} of f(params, {side}) (shape "
          f"{tuple(leaf.shape)}) axis {a}"] = leaf.shape[a]
  distinct = set(sizes.values())
  if len(distinct) != 1:
    detail = "; ".join(f"{k}: {v}" for k, v in sizes.items())
    raise ValueError(
        "`vmap_axes` does not fit the inputs: the batch axes it names have "
        f"different sizes ({detail}). Check in_axes/out_axes, or pass "
        "vmap_axes=None if f mixes examples.")
  return distinct.pop()


def per_example(f: Callable[..., Any], spec: VmapSpec, x_treedef: Any,
                out_treedef: Any) -> Callable[..., list[jax.Array]]:
  """``g(params, x_leaves_i, kw_i) -> output leaves for one example``.

  ``x_leaves_i`` is the flat list of x's leaves with batch axes removed, and
  ``kw_i`` the kwargs dict with batched kwargs' batch axes removed.
  """
  kwd = spec.kw_axes_dict

  def expand(leaves: Sequence[Any], axes: Sequence[int | None]) -> list[Any]:
    return [v if a is None else jnp.expand_dims(v, a)
            for v, a in zip(leaves, axes)]

  def g(params: PyTree, x_leaves: Sequence[Any], kw: dict[str, Any]):
    x = jax.tree.unflatten(x_treedef, expand(x_leaves, spec.x_axes))
    kw = dict(kw)
    for k, axs in kwd.items():
      leaves, td = jax.tree.flatten(kw[k])
      kw[k] = jax.tree.unflatten(td, expand(leaves, axs))
    out = f(params, x, **kw)
    leaves, td = jax.tree.flatten(out)
    if td != out_treedef:
      raise ValueError("f returned a different output structure on a single "
                       "example than on the batch; check `vmap_axes`.")
    for i, (o, a) in enumerate(zip(leaves, spec.out_axes)):
      if o.shape[a] != 1:
        raise ValueError(
            f"`vmap_axes` does not fit f: on one example, output leaf {i} has "
            f"shape {tuple(o.shape)} with size {o.shape[a]} on batch axis {a}"
            f" (expected 1). A kwarg with a batch axis must be named in "
            f"vmap_axes=(in_axes, out_axes, {{'name': axis}}); or pass "
            f"vmap_axes=None.")
    return [jnp.squeeze(o, a) for o, a in zip(leaves, spec.out_axes)]

  return g


def in_axes(spec: VmapSpec, kwargs: dict[str, Any]) -> tuple[Any, Any]:
  """``vmap`` in_axes for ``(x_leaves, kw)`` as passed to :func:`per_example`."""
  kwd = spec.kw_axes_dict
  kw_in = {}
  for k, v in kwargs.items():
    if k in kwd:
      kw_in[k] = jax.tree.unflatten(jax.tree.structure(v), list(kwd[k]))
    else:
      kw_in[k] = None
  return list(spec.x_axes), kw_in
