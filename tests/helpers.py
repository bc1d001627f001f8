"""Test helpers: independent kwargs splitting and tolerant comparisons."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rand(seed: int, shape, scale: float = 1.0) -> jax.Array:
  """A float32 standard-normal array (times ``scale``), drawn with NumPy: an
  eager ``jax.random`` call compiles a program per shape, which made
  building the test modules' arrays take seconds."""
  draw = np.random.default_rng(seed).standard_normal(shape)
  return jnp.asarray((scale * draw).astype(np.float32))


def split_kwargs_by_hand(kwargs, x1, x2):
  """neural-tangents' documented kwargs rules, written out independently."""
  kw1, kw2 = {}, {}
  for k, v in kwargs.items():
    if k == "rng" and x2 is not None:
      same = jax.tree.structure(x1) == jax.tree.structure(x2) and all(
          np.shape(a) == np.shape(b) and np.allclose(a, b, atol=0, rtol=0)
          for a, b in zip(jax.tree.leaves(x1), jax.tree.leaves(x2)))
      kw1[k] = v
      kw2[k] = v if same else jax.random.fold_in(v, 1)
    elif isinstance(v, tuple) and len(v) == 2:
      kw1[k], kw2[k] = v
    else:
      kw1[k] = kw2[k] = v
  return kw1, kw2


def assert_kernels_close(actual, expected, rtol=1e-4, atol_frac=1e-5):
  la, ta = jax.tree.flatten(actual)
  le, te = jax.tree.flatten(expected)
  assert ta == te, f"kernel tree {ta} != expected {te}"
  for a, e in zip(la, le):
    a = np.asarray(a, np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}"
    scale = max(np.abs(e).max(), 1e-30)
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol_frac * scale)
