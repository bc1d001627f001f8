"""One network with its layers' weights held four ways.

``separate`` leaves per layer, one ``indexed`` stacked leaf (``p["w"][i]``
in a Python loop), one stacked leaf applied with ``lax.scan`` over layers,
and (MLP) ``fori_loop`` over a layer index. Each model is a dict: ``fns``
(variant -> ``f(params, x)``), ``rest`` and ``stack`` (the parameters, see
:func:`params_of`), ``x`` and a ``note``.

>>> m = MODELS["mlp"](True)
>>> sorted(m["fns"])
['fori', 'indexed', 'scan', 'separate']
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

VARIANTS = ("separate", "indexed", "scan", "fori")


def _normal(key, shape, scale):
  return scale * jax.random.normal(key, shape, jnp.float32)


def _variants(layer: Callable, stack: dict[str, jax.Array], head: Callable,
              tail: Callable, fori: bool) -> dict[str, tuple]:
  """The four ways of holding ``stack`` (``{name: (L, ...)}``).

  ``layer(h, w)`` applies one layer with ``w = {name: array}``; ``head`` and
  ``tail`` map the input and the last hidden state with the rest of the
  parameters (``p["rest"]``).
  """
  n = next(iter(stack.values())).shape[0]

  def separate(p, x):
    h = head(p["rest"], x)
    for i in range(n):
      h = layer(h, p[f"layer{i}"])
    return tail(p["rest"], h)

  def indexed(p, x):
    h = head(p["rest"], x)
    for i in range(n):
      h = layer(h, {k: v[i] for k, v in p["stack"].items()})
    return tail(p["rest"], h)

  def scanned(p, x):
    h, _ = lax.scan(lambda h, w: (layer(h, w), None),
                    head(p["rest"], x), p["stack"])
    return tail(p["rest"], h)

  def fori_loop(p, x):
    h = lax.fori_loop(0, n, lambda i, h: layer(
        h, {k: v[i] for k, v in p["stack"].items()}), head(p["rest"], x))
    return tail(p["rest"], h)

  return {"separate": separate, "indexed": indexed, "scan": scanned,
          **({"fori": fori_loop} if fori else {})}


def params_of(variant: str, rest: dict, stack: dict) -> dict:
  """The parameters of ``variant`` (separate leaves or the stacked leaf)."""
  if variant == "separate":
    n = next(iter(stack.values())).shape[0]
    return {"rest": rest, **{f"layer{i}": {k: v[i] for k, v in stack.items()}
                             for i in range(n)}}
  return {"rest": rest, "stack": stack}


def mlp(quick: bool) -> dict[str, Any]:
  """An MLP 64 -> 256 x4 -> 10 (tanh), N = 16, full O x O."""
  d, w, o, n_layers, n = 64, 256, 10, 4, 16
  ks = jax.random.split(jax.random.PRNGKey(0), 4)
  rest = {"in": _normal(ks[0], (d, w), d ** -0.5),
          "out": _normal(ks[1], (w, o), w ** -0.5)}
  stack = {"w": _normal(ks[2], (n_layers, w, w), w ** -0.5)}
  fns = _variants(lambda h, p: jnp.tanh(h @ p["w"]), stack,
                  lambda r, x: jnp.tanh(x @ r["in"]),
                  lambda r, h: h @ r["out"], fori=True)
  return {"name": "mlp", "note": "64-256x4-10 tanh, N=16, full OxO",
          "fns": fns, "rest": rest, "stack": stack,
          "x": _normal(ks[3], (n, d), 1.0)}


def _conv(x, k):
  return lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def cnn(quick: bool) -> dict[str, Any]:
  """Conv 3x3 3->16, then four stacked conv 3x3 16->16 (relu), global
  average pool, dense 16 -> 10; 8x8x3 images, N = 8, full O x O."""
  c, n_layers, n, o = 16, 4, 8, 10
  ks = jax.random.split(jax.random.PRNGKey(1), 5)
  rest = {"in": _normal(ks[0], (3, 3, 3, c), (27) ** -0.5),
          "out": _normal(ks[1], (c, o), c ** -0.5)}
  stack = {"k": _normal(ks[2], (n_layers, 3, 3, c, c), (9 * c) ** -0.5),
           "b": _normal(ks[3], (n_layers, c), 0.1)}
  fns = _variants(lambda h, p: jax.nn.relu(_conv(h, p["k"]) + p["b"]), stack,
                  lambda r, x: jax.nn.relu(_conv(x, r["in"])),
                  lambda r, h: h.mean((-3, -2)) @ r["out"], fori=False)
  return {"name": "cnn", "note": "conv3x3 16ch x4 stacked, 8x8x3, N=8, "
          "full OxO", "fns": fns, "rest": rest, "stack": stack,
          "x": _normal(ks[4], (n, 8, 8, 3), 1.0)}


def _layer_norm(h, scale):
  mu = h.mean(-1, keepdims=True)
  var = ((h - mu) ** 2).mean(-1, keepdims=True)
  return (h - mu) * lax.rsqrt(var + 1e-5) * scale


def _block(h, p):
  a = _layer_norm(h, p["ln1"])
  q, k, v = a @ p["q"], a @ p["k"], a @ p["v"]
  att = jax.nn.softmax(jnp.einsum("...td,...sd->...ts", q, k) /
                       q.shape[-1] ** 0.5, axis=-1)
  h = h + jnp.einsum("...ts,...sd->...td", att, v) @ p["o"]
  return h + jax.nn.gelu(_layer_norm(h, p["ln2"]) @ p["w1"]) @ p["w2"]


def transformer(quick: bool) -> dict[str, Any]:
  """Four pre-LN transformer blocks (one head, d = 32, MLP 64), 8 tokens of
  16 features, mean over tokens, dense 32 -> 10; N = 8, full O x O."""
  d, t, f, n_layers, n, o = 32, 8, 16, 4, 8, 10
  ks = jax.random.split(jax.random.PRNGKey(2), 12)
  rest = {"emb": _normal(ks[0], (f, d), f ** -0.5),
          "out": _normal(ks[1], (d, o), d ** -0.5)}
  stack = {name: _normal(k, (n_layers, a, b), a ** -0.5)
           for name, k, a, b in (("q", ks[2], d, d), ("k", ks[3], d, d),
                                 ("v", ks[4], d, d), ("o", ks[5], d, d),
                                 ("w1", ks[6], d, 2 * d),
                                 ("w2", ks[7], 2 * d, d))}
  stack["ln1"] = 1.0 + _normal(ks[8], (n_layers, d), 0.1)
  stack["ln2"] = 1.0 + _normal(ks[9], (n_layers, d), 0.1)
  fns = _variants(_block, stack, lambda r, x: x @ r["emb"],
                  lambda r, h: h.mean(-2) @ r["out"], fori=False)
  return {"name": "transformer", "note": "4 blocks d=32 T=8, N=8, full OxO",
          "fns": fns, "rest": rest, "stack": stack,
          "x": _normal(ks[10], (n, t, f), 1.0)}


MODELS = {"mlp": mlp, "cnn": cnn, "transformer": transformer}
