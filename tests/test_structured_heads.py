"""Structured derivatives with a linear output head factored out.

An output ``s · dot_general(g, W)`` plus parameters used as themselves (an
LM's tied logits) gets its cotangents over ``g``; these cases check that the
head is found where it applies, declined where it does not, and that the
kernel matches the independent reference under every axes option.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autontk
import helpers
import reference
from autontk.methods.structured import StructuredConfig, _side  # noqa: PLC2701

VOCAB, D, T = 40, 4, 3


def _rand(seed, shape, scale=1.0):
  return helpers.rand(seed, shape, scale)


def lm(p, tokens):
  """Embedding gather, one causal mixing layer, tied and scaled logits."""
  h = p["emb"][tokens] + p["pos"]
  mask = jnp.tril(jnp.ones((T, T)))
  mix = jnp.einsum("ts,...sd->...td", mask * p["mix"], jnp.tanh(h))
  h = h + mix @ p["w"]
  return h @ p["emb"].T / math.sqrt(D)


PARAMS = {"emb": _rand(0, (VOCAB, D)), "pos": _rand(1, (T, D), 0.3),
          "mix": _rand(2, (T, T), 0.5), "w": _rand(3, (D, D), 0.5)}
T1 = jnp.array([[1, 5, 7], [3, 3, 0], [39, 1, 5]])
T2 = jnp.array([[0, 5, 12], [7, 1, 4]])


def _heads(f, params, x, vmap_axes, **axes):
  specs = []

  def trace(x, p):
    problem = autontk.ntk_fn(f, vmap_axes=vmap_axes, **axes).problem(
        x, None, p)
    specs.append(_side(problem, 1, StructuredConfig())[0])

  jax.eval_shape(trace, x, params)
  return specs[0].heads


def _check(f, params, x1, x2, trace_axes, diagonal_axes, vmap_axes):
  fn = autontk.ntk_fn(f, trace_axes=trace_axes, diagonal_axes=diagonal_axes,
                      vmap_axes=vmap_axes,
                      implementation="structured_derivatives")
  k = fn(x1, x2, params)
  ref = reference.reference_ntk(jax.jit(f), params, x1, x2, trace_axes,
                                diagonal_axes)
  np.testing.assert_allclose(np.asarray(k, np.float64), ref, rtol=1e-4,
                             atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("trace_axes,diagonal_axes,vmap_axes", [
    ((-1,), (), 0), ((), (-1,), 0), ((), (), 0), ((-1,), (), None),
    pytest.param((-1,), (0,), 0, marks=pytest.mark.slow),
    pytest.param((-2, -1), (), None, marks=pytest.mark.slow),
    pytest.param((), (-2,), 0, marks=pytest.mark.slow)])
def test_tied_lm_head(trace_axes, diagonal_axes, vmap_axes):
  heads = _heads(lm, PARAMS, T1, vmap_axes)
  assert heads[0] is not None and heads[0].scale == pytest.approx(D ** -0.5)
  same = 0 in diagonal_axes
  _check(lm, PARAMS, T1, None if same else T2, trace_axes, diagonal_axes,
         vmap_axes)


def test_untied_head_with_bias_and_activation_before():
  # The bias is scaled: its use has a diagonal map, not an implicit identity,
  # so the head is declined; without the scale it is kept.
  p = {"w": _rand(4, (3, 5), 0.5), "head": _rand(5, (5, 24)),
       "b": _rand(6, (24,))}
  f = lambda p, x: 2.0 * p["b"] - (jnp.tanh(x @ p["w"]) @ p["head"]) / 3.0
  x1, x2 = _rand(7, (4, 3)), _rand(8, (2, 3))
  assert _heads(f, p, x1, 0) == [None]
  _check(f, p, x1, x2, (-1,), (), 0)
  g = lambda p, x: p["b"] - (jnp.tanh(x @ p["w"]) @ p["head"]) / 3.0
  assert _heads(g, p, x1, 0)[0].scale == pytest.approx(-1 / 3)
  _check(g, p, x1, x2, (-1,), (), 0)
  _check(g, p, x1, x2, (), (), 0)


def test_head_declined_when_another_path_reaches_the_output():
  # tanh(x @ v) reaches the output outside the head: no factoring, and the
  # kernel is still exact.
  p = {"w": _rand(9, (3, 2)), "head": _rand(10, (2, 16)),
       "v": _rand(11, (3, 16))}
  f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["head"] + jnp.tanh(x @ p["v"])
  x1, x2 = _rand(12, (3, 3)), _rand(13, (2, 3))
  assert _heads(f, p, x1, 0) == [None]
  _check(f, p, x1, x2, (-1,), (), 0)


def test_scaled_identity_use():
  # The last layer reaches the output times a constant: its cotangent stays
  # an implicit (scaled) identity.
  p = {"w": _rand(14, (3, 4)), "out": _rand(15, (4, 5))}
  f = lambda p, x: (jnp.tanh(x @ p["w"]) @ p["out"]) * 0.5 / 3.0
  x1, x2 = _rand(16, (3, 3)), _rand(17, (2, 3))
  _check(f, p, x1, x2, (), (), 0)
  _check(f, p, x1, x2, (-1,), (), None)
