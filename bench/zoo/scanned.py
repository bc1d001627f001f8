"""Models whose blocks are scanned over layers, as users write them.

:data:`SCANNED` holds the ``scanned_regret`` suite's models: each stacks
its blocks' parameters along a leading layer axis and applies them with
``lax.scan`` (the way flax's ``nn.scan``, equinox's filtered scans and
stacked-layer transformers run), written in plain JAX so that no layer
library is needed. None of these shapes are in ``autontk/suite.py``, in
the device probe (:mod:`autontk.costmodel.device`) or in
:data:`bench.zoo.functions.UNSEEN`.

>>> m = SCANNED["mixer_scan_narrow"]()
>>> m.f(m.params, m.x1).shape
(8, 10)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from bench.zoo.functions import Model, normal

SCANNED: dict[str, Callable[[], Model]] = {}


def model(fn: Callable[[], Model]) -> Callable[[], Model]:
  SCANNED[fn.__name__] = fn
  return fn


def _layer_norm(h, scale):
  mu = h.mean(-1, keepdims=True)
  var = ((h - mu) ** 2).mean(-1, keepdims=True)
  return (h - mu) * lax.rsqrt(var + 1e-5) * scale


def _mixer(depth, tokens, dim, token_mlp, channel_mlp, features, n, out,
           seed):
  """MLP-Mixer blocks scanned over layers, mean over tokens, dense head."""
  stack = {"t1": normal(seed, (depth, tokens, token_mlp), tokens ** -0.5),
           "t2": normal(seed + 1, (depth, token_mlp, tokens),
                         token_mlp ** -0.5),
           "c1": normal(seed + 2, (depth, dim, channel_mlp), dim ** -0.5),
           "c2": normal(seed + 3, (depth, channel_mlp, dim),
                         channel_mlp ** -0.5),
           "ln1": jnp.ones((depth, dim)), "ln2": jnp.ones((depth, dim))}
  params = {"embed": normal(seed + 4, (features, dim), features ** -0.5),
            "head": normal(seed + 5, (dim, out), dim ** -0.5),
            "blocks": stack}

  def block(h, p):
    a = jnp.swapaxes(_layer_norm(h, p["ln1"]), -1, -2)
    h = h + jnp.swapaxes(jax.nn.gelu(a @ p["t1"]) @ p["t2"], -1, -2)
    return h + jax.nn.gelu(_layer_norm(h, p["ln2"]) @ p["c1"]) @ p["c2"], None

  def f(p, x):
    h, _ = lax.scan(block, x @ p["embed"], p["blocks"])
    return h.mean(-2) @ p["head"]

  x = lambda s: normal(s, (n, tokens, features))
  return Model(f, params, x(seed + 6), x(seed + 7), family="scan")


@model
def mixer_scan_narrow():
  """4 Mixer blocks: 16 tokens, width 48, token MLP 24, channel MLP 96."""
  return _mixer(4, 16, 48, 24, 96, 32, 8, 10, seed=100)


@model
def mixer_scan_wide():
  """3 Mixer blocks: 8 tokens, width 96, token MLP 16, channel MLP 192."""
  return _mixer(3, 8, 96, 16, 192, 24, 6, 10, seed=110)


@model
def transformer_scan():
  """4 pre-LN transformer blocks (2 heads, width 32, MLP 64) scanned over
  layers; 10 tokens, mean over tokens, 6 outputs."""
  depth, t, d, heads, mlp, n = 4, 10, 32, 2, 64, 8
  k = lambda i, a, b: normal(120 + i, (depth, a, b), a ** -0.5)
  stack = {"qkv": k(0, d, 3 * d), "o": k(1, d, d), "w1": k(2, d, mlp),
           "w2": k(3, mlp, d), "ln1": jnp.ones((depth, d)),
           "ln2": jnp.ones((depth, d))}
  params = {"embed": normal(130, (12, d), 12 ** -0.5),
            "head": normal(131, (d, 6), d ** -0.5), "blocks": stack}

  def block(h, p):
    q, kk, v = jnp.split(_layer_norm(h, p["ln1"]) @ p["qkv"], 3, axis=-1)
    split = lambda a: a.reshape(*a.shape[:-1], heads, d // heads)
    att = jax.nn.softmax(jnp.einsum("...thd,...shd->...hts", split(q),
                                    split(kk)) / (d // heads) ** 0.5, -1)
    mixed = jnp.einsum("...hts,...shd->...thd", att, split(v))
    h = h + mixed.reshape(h.shape) @ p["o"]
    return h + jax.nn.gelu(_layer_norm(h, p["ln2"]) @ p["w1"]) @ p["w2"], None

  def f(p, x):
    h, _ = lax.scan(block, x @ p["embed"], p["blocks"])
    return h.mean(-2) @ p["head"]

  return Model(f, params, normal(132, (n, t, 12)), normal(133, (n, t, 12)),
               family="scan")


@model
def flax_style_scanned_mlp():
  """What ``nn.scan(Block, variable_axes={"params": 0}, length=6)`` builds:
  ``{"ScanBlock_0": {"Dense_0": {"kernel", "bias"}, "LayerNorm_0":
  {"scale", "bias"}}}`` stacked along axis 0, a residual MLP block; full
  output block of 4."""
  depth, d, hidden, n = 6, 40, 80, 12
  block_params = {
      "Dense_0": {"kernel": normal(140, (depth, d, hidden), d ** -0.5),
                  "bias": jnp.zeros((depth, hidden))},
      "Dense_1": {"kernel": normal(141, (depth, hidden, d), hidden ** -0.5),
                  "bias": jnp.zeros((depth, d))},
      "LayerNorm_0": {"scale": jnp.ones((depth, d)),
                      "bias": jnp.zeros((depth, d))}}
  params = {"params": {"ScanBlock_0": block_params,
                       "Dense_in": {"kernel": normal(142, (20, d), 20 ** -.5)},
                       "Dense_out": {"kernel": normal(143, (d, 4), d ** -.5)}}}

  def block(h, p):
    ln = _layer_norm(h, p["LayerNorm_0"]["scale"]) + p["LayerNorm_0"]["bias"]
    a = jax.nn.relu(ln @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"])
    return h + a @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"], None

  def f(variables, x):
    p = variables["params"]
    h, _ = lax.scan(block, x @ p["Dense_in"]["kernel"], p["ScanBlock_0"])
    return h @ p["Dense_out"]["kernel"]

  return Model(f, params, normal(144, (n, 20)), normal(145, (n, 20)),
               trace_axes=(), family="scan")


@model
def equinox_style_filtered_scan():
  """An equinox-style stack: a list of layer pytrees with arrays and static
  fields (an activation's name, a flag), stacked with ``tree.map`` over the
  array leaves only (``eqx.filter``-like partition), scanned, and put back
  together in the body (``eqx.combine``-like); 5 outputs, traced."""
  depth, d, n = 5, 48, 10
  keys = jax.random.split(jax.random.PRNGKey(150), depth)
  layers = [{"weight": jax.random.normal(k, (d, d)) * d ** -0.5,
             "bias": jnp.zeros((d,)), "activation": "tanh",
             "use_bias": True} for k in keys]
  is_array = lambda v: isinstance(v, jax.Array)
  arrays = [{k: v for k, v in layer.items() if is_array(v)}
            for layer in layers]
  static = {k: v for k, v in layers[0].items() if not is_array(v)}
  params = {"stack": jax.tree.map(lambda *xs: jnp.stack(xs), *arrays),
            "head": normal(151, (d, 5), d ** -0.5),
            "embed": normal(152, (16, d), 16 ** -0.5)}

  def layer_call(layer, h):
    y = h @ layer["weight"] + (layer["bias"] if layer["use_bias"] else 0.0)
    return getattr(jnp, layer["activation"])(y)

  def f(p, x):
    def body(h, dynamic):
      return layer_call({**dynamic, **static}, h), None
    h, _ = lax.scan(body, jnp.tanh(x @ p["embed"]), p["stack"])
    return h @ p["head"]

  return Model(f, params, normal(153, (n, 16)), normal(154, (n, 16)),
               family="scan")


@model
def lstm_scan_h48():
  """An LSTM cell scanned over 12 time steps (hidden 48, inputs 10), the
  last state read out to 3 outputs."""
  steps, d_in, h, n = 12, 10, 48, 10
  params = {"wx": normal(160, (d_in, 4 * h), d_in ** -0.5),
            "wh": normal(161, (h, 4 * h), h ** -0.5),
            "b": jnp.zeros((4 * h,)), "head": normal(162, (h, 3), h ** -0.5)}

  def f(p, x):
    def step(carry, xt):
      hs, cs = carry
      i, g, fo, o = jnp.split(xt @ p["wx"] + hs @ p["wh"] + p["b"], 4, -1)
      cs = jax.nn.sigmoid(fo) * cs + jax.nn.sigmoid(i) * jnp.tanh(g)
      hs = jax.nn.sigmoid(o) * jnp.tanh(cs)
      return (hs, cs), None
    zeros = jnp.zeros(x.shape[:-2] + (h,))
    (hs, _), _ = lax.scan(step, (zeros, zeros), jnp.moveaxis(x, -2, 0))
    return hs @ p["head"]

  return Model(f, params, normal(163, (n, steps, d_in)),
               normal(164, (n, steps, d_in)), family="scan")
