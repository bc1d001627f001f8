"""Model families where structured derivatives meet the machine's limits.

The ``machine_speed`` suite's models, written as users write them: a ViT
(attention), a causal transformer LM with a token embedding and a tied
output projection over a vocabulary of a few thousand, a MobileNet-style CNN
(depthwise and pointwise convolutions), an MLP-Mixer whose blocks are
scanned over layers, a scanned tanh RNN, and an MLP and a CNN as controls.

Each builder takes ``unroll``: the same model with its scans unrolled
(identical values), so XLA's cost analysis, which counts a loop body once,
counts every iteration's FLOPs.

>>> m = FAMILIES["mlp"](False)
>>> m.f(m.params, m.x1).shape
(16, 10)
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from bench.zoo import specs
from bench.zoo.functions import Model, normal

FAMILIES: dict[str, Callable[[bool], Model]] = {}


def _family(fn: Callable[[bool], Model]) -> Callable[[bool], Model]:
  FAMILIES[fn.__name__] = fn
  return fn


def _from_spec(spec, in_shape, n: int, note: str, family: str) -> Model:
  params = {k: jnp.asarray(v) for k, v in
            specs.init_params(spec, in_shape, seed=0).items()}
  x1 = jnp.asarray(specs.init_inputs(in_shape, n, 1))
  x2 = jnp.asarray(specs.init_inputs(in_shape, n, 2))
  return Model(specs.apply(spec), params, x1, x2, trace_axes=(),
               family=family, note=note)


@_family
def mlp(unroll: bool) -> Model:
  del unroll
  return _from_spec(specs.fcn([64, 256, 256, 10], "gelu"), (64,), 16,
                    "64-256-256-10 gelu, N = 16, full O×O", "control")


@_family
def cnn(unroll: bool) -> Model:
  del unroll
  return _from_spec(specs.cnn((16, 32), 10, pool="gap"), (16, 16, 3), 8,
                    "2 conv3×3 (16, 32), GAP, dense 10, 16×16×3, N = 8, "
                    "full O×O", "control")


@_family
def vit(unroll: bool) -> Model:
  del unroll
  return _from_spec(specs.transformer(32, 4, 64, 2, 10, patch=4),
                    (16, 16, 3), 8, "2 blocks, d = 32, 4 heads, 16 tokens, "
                    "N = 8, full O×O", "attention")


def _layer_norm(h, g, b):
  mu = h.mean(-1, keepdims=True)
  var = ((h - mu) ** 2).mean(-1, keepdims=True)
  return (h - mu) * lax.rsqrt(var + 1e-5) * g + b


def _lm(trace_vocab: bool) -> Model:
  vocab, d, t, heads, n = 2048, 32, 4, 2, 4
  dh = d // heads
  params = {"emb": normal(0, (vocab, d), 1.0),
            "pos": normal(1, (t, d), 0.1),
            "ln1": {"g": jnp.ones(d), "b": jnp.zeros(d)},
            "qkv": normal(2, (d, 3 * d), d ** -0.5),
            "o": normal(3, (d, d), d ** -0.5),
            "ln2": {"g": jnp.ones(d), "b": jnp.zeros(d)},
            "w1": normal(4, (d, 2 * d), d ** -0.5),
            "w2": normal(5, (2 * d, d), (2 * d) ** -0.5)}
  mask = jnp.tril(jnp.ones((t, t), bool))

  def f(p, tokens):
    h = p["emb"][tokens] + p["pos"]                       # a gather
    a = _layer_norm(h, p["ln1"]["g"], p["ln1"]["b"])
    q, k, v = jnp.split(a @ p["qkv"], 3, axis=-1)
    split = lambda z: z.reshape(z.shape[:-1] + (heads, dh))  # noqa: E731
    logits = jnp.einsum("...thd,...shd->...hts", split(q), split(k))
    logits = jnp.where(mask, logits / math.sqrt(dh), -1e9)
    y = jnp.einsum("...hts,...shd->...thd", jax.nn.softmax(logits, -1),
                   split(v)).reshape(h.shape)
    h = h + y @ p["o"]
    a = _layer_norm(h, p["ln2"]["g"], p["ln2"]["b"])
    h = h + jax.nn.gelu(a @ p["w1"]) @ p["w2"]
    return h @ p["emb"].T / math.sqrt(d)                  # tied projection

  x1 = jax.random.randint(jax.random.PRNGKey(6), (n, t), 0, vocab)
  x2 = jax.random.randint(jax.random.PRNGKey(7), (n, t), 0, vocab)
  if trace_vocab:
    return Model(f, params, x1, x2, trace_axes=(-1,), family="lm",
                 note=f"V = {vocab}, d = {d}, T = {t}, 1 causal block, "
                 f"N = {n}, vocabulary traced: kernel (N, N, T, T)")
  return Model(f, params, x1, x2, trace_axes=(), diagonal_axes=(-1,),
               family="lm",
               note=f"V = {vocab}, d = {d}, T = {t}, 1 causal block, N = {n},"
               " vocabulary not traced (a diagonal axis): kernel "
               "(N, N, T, T, V)")


@_family
def lm_vocab_traced(unroll: bool) -> Model:
  del unroll
  return _lm(True)


@_family
def lm_vocab_diagonal(unroll: bool) -> Model:
  del unroll
  return _lm(False)


def _conv(x, w, groups: int = 1, stride: int = 1):
  return lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=groups)


@_family
def mobilenet(unroll: bool) -> Model:
  del unroll
  widths, n, hw = (16, 32, 32), 8, 16
  params = {"stem": normal(0, (3, 3, 3, widths[0]), 27 ** -0.5)}
  for i, (c, c_out) in enumerate(zip(widths[:-1], widths[1:])):
    params[f"dw{i}"] = normal(10 + i, (3, 3, 1, c), 1 / 3)
    params[f"pw{i}"] = normal(20 + i, (1, 1, c, c_out), c ** -0.5)
  params["head"] = normal(30, (widths[-1], 10), widths[-1] ** -0.5)

  def f(p, x):
    h = jax.nn.relu(_conv(x, p["stem"]))
    for i, c in enumerate(widths[:-1]):
      h = jax.nn.relu(_conv(h, p[f"dw{i}"], groups=c))   # depthwise
      h = jax.nn.relu(_conv(h, p[f"pw{i}"]))             # pointwise
    return h.mean((1, 2)) @ p["head"]

  return Model(f, params, normal(40, (n, hw, hw, 3)),
               normal(41, (n, hw, hw, 3)), trace_axes=(), family="depthwise",
               note="stem 3×3, 2 × (depthwise 3×3 + pointwise 1×1), 16→32 "
               "channels, 16×16×3, N = 8, full O×O")


@_family
def mixer_scan(unroll: bool) -> Model:
  depth, tokens, d, tmlp, cmlp, n = 4, 16, 32, 32, 64, 8
  patch_dim = 4 * 4 * 3
  stack = {"ln1": 1.0 + normal(0, (depth, d), 0.1),
           "t1": normal(1, (depth, tokens, tmlp), tokens ** -0.5),
           "t2": normal(2, (depth, tmlp, tokens), tmlp ** -0.5),
           "ln2": 1.0 + normal(3, (depth, d), 0.1),
           "c1": normal(4, (depth, d, cmlp), d ** -0.5),
           "c2": normal(5, (depth, cmlp, d), cmlp ** -0.5)}
  params = {"embed": normal(6, (patch_dim, d), patch_dim ** -0.5),
            "blocks": stack, "head": normal(7, (d, 10), d ** -0.5)}
  zero = jnp.zeros(d)

  def block(h, p):
    a = jnp.swapaxes(_layer_norm(h, p["ln1"], zero), -1, -2)
    h = h + jnp.swapaxes(jax.nn.gelu(a @ p["t1"]) @ p["t2"], -1, -2)
    a = _layer_norm(h, p["ln2"], zero)
    return h + jax.nn.gelu(a @ p["c1"]) @ p["c2"], None

  def f(p, x):
    lead, (hh, ww, c) = x.shape[:-3], x.shape[-3:]
    x = x.reshape(lead + (hh // 4, 4, ww // 4, 4, c))
    x = jnp.swapaxes(x, -4, -3)
    h = x.reshape(lead + (tokens, patch_dim)) @ p["embed"]
    h, _ = lax.scan(block, h, p["blocks"], unroll=unroll)
    return _layer_norm(h, 1.0, 0.0).mean(1) @ p["head"]

  return Model(f, params, normal(8, (n, 16, 16, 3)),
               normal(9, (n, 16, 16, 3)), trace_axes=(), family="scanned",
               note=f"{depth} blocks scanned over layers, d = {d}, "
               f"{tokens} tokens, N = {n}, full O×O")


@_family
def rnn_scan(unroll: bool) -> Model:
  steps, d_in, hidden, out, n = 16, 8, 64, 10, 8
  params = {"wx": normal(0, (d_in, hidden), d_in ** -0.5),
            "wh": normal(1, (hidden, hidden), hidden ** -0.5),
            "b": jnp.zeros(hidden), "wo": normal(2, (hidden, out),
                                                  hidden ** -0.5)}

  def f(p, x):
    def step(h, xt):
      return jnp.tanh(xt @ p["wx"] + h @ p["wh"] + p["b"]), None
    h0 = jnp.zeros(x.shape[:-2] + (hidden,))
    h, _ = lax.scan(step, h0, jnp.moveaxis(x, -2, 0), unroll=unroll)
    return h @ p["wo"]

  return Model(f, params, normal(3, (n, steps, d_in)),
               normal(4, (n, steps, d_in)), trace_axes=(), family="scanned",
               note=f"tanh RNN, {steps} steps, hidden {hidden}, N = {n}, "
               "full O×O")
