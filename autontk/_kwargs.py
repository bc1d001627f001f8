"""Splitting ``f``'s keyword arguments between the x1 and x2 evaluations.

Same rules as neural-tangents' ``utils.split_kwargs``:

1. a kwarg named ``rng`` (a PRNG key) becomes two keys: the same key when
   ``x2`` is ``None`` or equal to ``x1``, else ``fold_in(key, 1)`` for x2;
2. any other kwarg given as a 2-tuple is split into (for x1, for x2);
3. anything else is shared.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from autontk._types import PyTree


def is_array_leaf(v: Any) -> bool:
  """An array leaf (traced under jit); anything else is a static Python value."""
  return isinstance(v, (jax.Array, np.ndarray, np.generic))


def partition(tree: PyTree, is_dynamic: Callable[[Any], bool]
              ) -> tuple[list[Any], Any]:
  """``(dynamic leaves, static key)`` of ``tree`` by ``is_dynamic(leaf)``.

  The static key ``(treedef, dynamic mask, static leaves)`` is hashable when
  the static values are; :func:`merge_static` inverts the split.
  """
  leaves, treedef = jax.tree.flatten(tree)
  mask = tuple(bool(is_dynamic(v)) for v in leaves)
  dynamic = [v for v, d in zip(leaves, mask) if d]
  static = tuple(v for v, d in zip(leaves, mask) if not d)
  return dynamic, (treedef, mask, static)


def split_static(kwargs: dict[str, Any]) -> tuple[list[Any], Any]:
  """``(array leaves, static key)``: arrays are traced, the rest is static."""
  return partition(kwargs, is_array_leaf)


def merge_leaves(dynamic: list[Any], static_key: Any) -> list[Any]:
  """All leaves, in order, from a :func:`partition`."""
  _, mask, static = static_key
  it_d, it_s = iter(dynamic), iter(static)
  return [next(it_d) if d else next(it_s) for d in mask]


def merge_static(dynamic: list[Any], static_key: Any) -> Any:
  """Inverse of :func:`partition` (:func:`split_static`,
  :func:`split_params`)."""
  return jax.tree.unflatten(static_key[0], merge_leaves(dynamic, static_key))


def is_static_param(v: Any) -> bool:
  """A params leaf held as a Python constant rather than traced.

  Array leaves (concrete, traced or abstract) and floating-point Python
  numbers are traced; every other leaf (a Python ``int`` or ``bool``, a
  string, an object inside an equinox module...) has no tangent space and is
  passed to ``f`` as itself, as ``f`` may use it in Python control flow
  (``range(self.n_layers)``).
  """
  return not isinstance(v, (jax.Array, np.ndarray, np.generic,
                            jax.ShapeDtypeStruct, float, complex))


def split_params(params: PyTree) -> tuple[list[Any], Any]:
  """``(traced leaves, static key)`` of ``params``; see :func:`is_static_param`.

  Inverted by :func:`merge_static`, like :func:`split_static`.
  """
  return partition(params, lambda v: not is_static_param(v))


def inputs_equal(x1: PyTree, x2: PyTree, eps: float = 1e-12) -> Any:
  """``True``/``False`` when known statically, else a traced boolean."""
  if x1 is x2:
    return True
  l1, t1 = jax.tree.flatten(x1)
  l2, t2 = jax.tree.flatten(x2)
  if t1 != t2 or any(np.shape(a) != np.shape(b) for a, b in zip(l1, l2)):
    return False
  if all(a is b for a, b in zip(l1, l2)):
    return True
  eq = [jnp.all(jnp.abs(jnp.asarray(a) - jnp.asarray(b)) < eps)
        for a, b in zip(l1, l2)]
  return jnp.all(jnp.stack(eq)) if eq else True


def _select_key(pred: Any, k_true: jax.Array, k_false: jax.Array) -> jax.Array:
  if pred is True:
    return k_true
  if pred is False:
    return k_false
  if jnp.issubdtype(k_true.dtype, jax.dtypes.prng_key):
    impl = jax.random.key_impl(k_true)
    data = jnp.where(pred, jax.random.key_data(k_true),
                     jax.random.key_data(k_false))
    return jax.random.wrap_key_data(data, impl=impl)
  return jnp.where(pred, k_true, k_false)


def split_rng(key: Any, x1: PyTree, x2: PyTree) -> tuple[Any, Any]:
  """Two keys for x1 and x2: equal exactly when the inputs are equal."""
  if key is None:
    return None, None
  if isinstance(key, tuple) and len(key) == 2:
    k1, k2 = key
    same_keys = inputs_equal(k1, k2)
    k2 = _select_key(same_keys, jax.random.fold_in(k2, 1), k2)
    return k1, _select_key(inputs_equal(x1, x2), k1, k2)
  if not isinstance(key, (jax.Array, np.ndarray)):
    raise TypeError(
        f"The keyword argument `rng` must be a PRNG key (or a pair of keys); "
        f"got {type(key).__name__}.")
  return key, _select_key(inputs_equal(x1, x2), key,
                          jax.random.fold_in(key, 1))


def split_kwargs(kwargs: dict[str, Any], x1: PyTree,
                 x2: PyTree | None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Returns ``(kwargs1, kwargs2)`` for ``f(params, x1)`` and ``f(params, x2)``."""
  kw1: dict[str, Any] = {}
  kw2: dict[str, Any] = {}
  for k, v in kwargs.items():
    if x2 is not None and k == "rng":
      kw1[k], kw2[k] = split_rng(v, x1, x2)
    elif isinstance(v, tuple) and len(v) == 2:
      kw1[k], kw2[k] = v
    else:
      kw1[k] = kw2[k] = v
  return kw1, kw2
