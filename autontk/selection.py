"""Which parameters a kernel is taken with respect to, and how they are grouped.

``ntk_fn(f, wrt=..., groups=...)`` keeps these as a :class:`ParamSelection`.
Per call it is resolved against ``params`` into a :class:`ResolvedSelection`:
one flag per params leaf (differentiated or constant) and, with ``groups``,
one group per differentiated leaf. Unselected floating-point leaves become
constants exactly as integer leaves are, so every method, chunking and the
cost model see the smaller problem.

Leaves are named by their *path*: the keys from the root of ``params`` to the
leaf joined by ``/`` (``{"head": {"kernel": w}}`` gives ``"head/kernel"``, the
second entry of a list ``"1"``, a field of a dataclass or equinox module its
name). The ``.value`` of a flax nnx variable is not part of the path, so an
``nnx.State`` reads ``"linear1/kernel"``.

``wrt`` takes

* a path pattern or a sequence of them (``"head/*"``, ``"*/kernel"``): a
  leaf is selected when a pattern matches its path or the path of one of its
  ancestors (``"head"`` selects everything under ``head``); ``*`` matches
  any characters, ``/`` included, as :func:`fnmatch.fnmatchcase` does;
* a callable ``(path, leaf) -> bool``, called once per leaf (``leaf`` may be
  a tracer: decide on the path, shape and dtype, not on values);
* a pytree of booleans that is a prefix of ``params`` (as optax masks are).

``groups`` takes a callable ``path -> name`` (a string), ``"layer"`` (one
group per module: the path without its last key) or ``"top"`` (one group per
top-level key).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
from typing import Any, Sequence

import jax
import numpy as np

from autontk._types import PyTree

GROUP_PRESETS = ("layer", "top")
"""The ready-made ``groups`` options (see the module docstring)."""

_CACHE_SIZE = 64


def _key_str(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_str(path: Sequence[Any]) -> str:
  """``"a/b/0/kernel"`` from a ``jax.tree_util`` key path.

  >>> import jax
  >>> [path_str(p) for p, _ in
  ...  jax.tree_util.tree_flatten_with_path({"a": [1.0, 2.0]})[0]]
  ['a/0', 'a/1']
  """
  keys = list(path)
  # flax nnx: a Variable holds its array in `.value`, not part of the name.
  if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and (
      keys[-1].name == "value"):
    keys = keys[:-1]
  return "/".join(_key_str(k) for k in keys)


def leaf_paths(params: PyTree) -> list[str]:
  """The path of every leaf of ``params``, in ``jax.tree.leaves`` order."""
  return [path_str(p) for p, _ in
          jax.tree_util.tree_flatten_with_path(params)[0]]


@dataclasses.dataclass(frozen=True)
class _Prefix:
  """A pytree of booleans, hashable (``wrt`` given as a mask)."""

  treedef: Any
  leaves: tuple[bool, ...]


@dataclasses.dataclass(frozen=True)
class ResolvedSelection:
  """A :class:`ParamSelection` applied to one params structure.

  Attributes:
    paths: the path of every params leaf.
    mask: per params leaf, whether it is differentiated.
    group_names: the groups, sorted (``None`` without ``groups``).
    leaf_groups: per differentiated leaf, the index of its group in
      ``group_names`` (``None`` without ``groups``).
  """

  paths: tuple[str, ...]
  mask: tuple[bool, ...]
  group_names: tuple[str, ...] | None = None
  leaf_groups: tuple[int, ...] | None = None

  def selected_paths(self) -> list[str]:
    return [p for p, m in zip(self.paths, self.mask) if m]

  def summary(self) -> dict[str, Any]:
    """JSON summary: counts, and a digest of the exact leaf-to-group map
    (what the plan cache keys on)."""
    detail = [self.mask, self.group_names, self.leaf_groups]
    digest = hashlib.sha256(repr(detail).encode()).hexdigest()[:16]
    out: dict[str, Any] = {"selected_leaves": sum(self.mask),
                           "leaves": len(self.mask), "digest": digest}
    if self.group_names is not None:
      out["groups"] = list(self.group_names)
    return out


@dataclasses.dataclass(frozen=True)
class ParamSelection:
  """``wrt`` and ``groups`` as given to :func:`autontk.ntk_fn`, validated.

  Attributes:
    wrt: ``None`` (every floating-point leaf), a tuple of path patterns, a
      callable ``(path, leaf) -> bool``, or a prefix mask.
    groups: ``None``, ``"layer"``, ``"top"`` or a callable ``path -> name``.

  >>> import jax.numpy as jnp
  >>> sel = ParamSelection.make("head/*", "layer")
  >>> p = {"body": {"w": jnp.ones(2)}, "head": {"w": jnp.ones(2)}}
  >>> sel.resolve(p, (True, True)).mask
  (False, True)
  """

  wrt: Any = None
  groups: Any = None
  _memo: dict = dataclasses.field(default_factory=dict, compare=False,
                                  hash=False, repr=False)

  @staticmethod
  def make(wrt: Any = None, groups: Any = None) -> "ParamSelection | None":
    """Validates ``wrt`` and ``groups``; ``None`` when both are ``None``."""
    if wrt is None and groups is None:
      return None
    return ParamSelection(_normalise_wrt(wrt), _normalise_groups(groups))

  def describe(self) -> str:
    parts = []
    if isinstance(self.wrt, tuple):
      parts.append(f"wrt={list(self.wrt)!r}")
    elif isinstance(self.wrt, _Prefix):
      parts.append("wrt=<mask>")
    elif self.wrt is not None:
      parts.append(f"wrt={getattr(self.wrt, '__name__', 'callable')}")
    if isinstance(self.groups, str):
      parts.append(f"groups={self.groups!r}")
    elif self.groups is not None:
      parts.append(f"groups={getattr(self.groups, '__name__', 'callable')}")
    return ", ".join(parts)

  def resolve(self, params: PyTree,
              differentiable: Sequence[bool]) -> ResolvedSelection:
    """The selection for this ``params`` structure.

    Args:
      params: the parameters (arrays, tracers or ``ShapeDtypeStruct`` s).
      differentiable: per params leaf, whether it is floating point (only
        those can be selected).

    Raises:
      ValueError: ``wrt`` matches nothing, names paths ``params`` does not
        have, or selects no floating-point leaf.
      TypeError: ``wrt`` or ``groups`` returns something else than a bool
        or a string.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    key = (treedef, tuple(differentiable),
           tuple(_abstract_key(v) for _, v in flat))
    hit = self._memo.get(key)
    if hit is None:
      hit = self._resolve(params, [path_str(p) for p, _ in flat],
                          [v for _, v in flat], tuple(differentiable))
      if len(self._memo) >= _CACHE_SIZE:
        self._memo.clear()
      self._memo[key] = hit
    return hit

  def _resolve(self, params, paths, leaves, diff) -> ResolvedSelection:
    picked = _wrt_mask(self.wrt, params, paths, leaves)
    mask = tuple(bool(p and d) for p, d in zip(picked, diff))
    if self.wrt is not None and not any(mask):
      chosen = [p for p, s in zip(paths, picked) if s]
      what = (f"only non-floating-point leaves ({_some(chosen)})" if chosen
              else "no leaf")
      raise ValueError(f"`wrt` selects {what}; the floating-point leaves of "
                       f"params are {_some(_floats(paths, diff))}.")
    if self.groups is None:
      return ResolvedSelection(tuple(paths), mask)
    names = [_group_name(self.groups, p)
             for p, m in zip(paths, mask) if m]
    if not names:
      raise ValueError("`groups`: params has no floating-point leaf to "
                       "group.")
    order = tuple(sorted(set(names)))
    index = {n: i for i, n in enumerate(order)}
    return ResolvedSelection(tuple(paths), mask, order,
                             tuple(index[n] for n in names))


def _abstract_key(v: Any) -> Any:
  shape = getattr(v, "shape", None)
  dtype = getattr(v, "dtype", None)
  if shape is not None and dtype is not None:
    return (tuple(shape), str(dtype))
  return (type(v).__name__,)


def _some(paths: Sequence[str], n: int = 8) -> str:
  shown = ", ".join(repr(p) for p in paths[:n])
  more = len(paths) - n
  return (shown + (f" and {more} more" if more > 0 else "")) or "none"


def _floats(paths: Sequence[str], diff: Sequence[bool]) -> list[str]:
  return [p for p, d in zip(paths, diff) if d]


def _is_function(v: Any) -> bool:
  """A callable that is not itself a pytree of flags (an equinox filter
  spec is a callable module *with* leaves)."""
  return callable(v) and jax.tree_util.treedef_is_leaf(
      jax.tree.structure(v))


def _normalise_wrt(wrt: Any) -> Any:
  if wrt is None:
    return None
  if isinstance(wrt, str):
    return (wrt,)
  if isinstance(wrt, (list, tuple)) and wrt and all(
      isinstance(w, str) for w in wrt):
    return tuple(wrt)
  if _is_function(wrt):
    return wrt
  leaves, treedef = jax.tree.flatten(wrt)
  if not leaves:
    raise ValueError(f"`wrt` is empty ({wrt!r}); pass path patterns, a "
                     "callable (path, leaf) -> bool or a pytree of booleans.")
  for v in leaves:
    if not isinstance(v, (bool, np.bool_)):
      raise TypeError(
          f"`wrt` must be a path pattern (str), a sequence of them, a "
          f"callable (path, leaf) -> bool or a pytree of booleans that is a "
          f"prefix of params; it has a leaf {v!r} of type "
          f"{type(v).__name__}.")
  return _Prefix(treedef, tuple(bool(v) for v in leaves))


def _normalise_groups(groups: Any) -> Any:
  if groups is None or callable(groups):
    return groups
  if isinstance(groups, str) and groups in GROUP_PRESETS:
    return groups
  raise ValueError(f"`groups` must be a callable path -> name or one of "
                   f"{GROUP_PRESETS}; got {groups!r}.")


def _wrt_mask(wrt: Any, params: PyTree, paths: list[str],
              leaves: list[Any]) -> list[bool]:
  if wrt is None:
    return [True] * len(paths)
  if isinstance(wrt, tuple):
    return _pattern_mask(wrt, paths)
  if isinstance(wrt, _Prefix):
    return _prefix_mask(wrt, params, len(paths))
  out = []
  for p, v in zip(paths, leaves):
    r = wrt(p, v)
    if not isinstance(r, (bool, np.bool_)):
      raise TypeError(f"`wrt` returned {type(r).__name__} for the leaf "
                      f"{p!r}; it must return a Python bool (decide on the "
                      "path, shape and dtype, not on values).")
    out.append(bool(r))
  return out


def _ancestors(path: str) -> list[str]:
  parts = path.split("/")
  return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]


def _pattern_mask(patterns: tuple[str, ...], paths: list[str]) -> list[bool]:
  hits = {pat: False for pat in patterns}
  out = []
  for path in paths:
    names = _ancestors(path)
    sel = False
    for pat in patterns:
      if any(fnmatch.fnmatchcase(n, pat) for n in names):
        hits[pat] = sel = True
    out.append(sel)
  missing = [pat for pat, hit in hits.items() if not hit]
  if missing:
    raise ValueError(f"`wrt` pattern(s) {missing} match no parameter; the "
                     f"params' paths are {_some(paths)}.")
  return out


def _prefix_mask(prefix: _Prefix, params: PyTree, n: int) -> list[bool]:
  try:
    subtrees = prefix.treedef.flatten_up_to(params)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f"`wrt` must be a pytree of booleans that is a prefix of params "
        f"(as optax masks are): {e}") from None
  out: list[bool] = []
  for flag, sub in zip(prefix.leaves, subtrees):
    out.extend([flag] * len(jax.tree.leaves(sub)))
  assert len(out) == n
  return out


def _group_name(groups: Any, path: str) -> str:
  if groups == "layer":
    parent = path.rpartition("/")[0]
    return parent or path or "params"
  if groups == "top":
    return path.split("/")[0] or "params"
  name = groups(path)
  if not isinstance(name, str):
    raise TypeError(f"`groups` returned {name!r} ({type(name).__name__}) for "
                    f"the leaf {path!r}; it must return a group name (str).")
  return name
