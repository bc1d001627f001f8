"""Models the cost model was not tuned on, written as users write them.

Plain JAX with ``lax.scan`` / ``fori_loop``, deep narrow MLPs, small
attention and CNN blocks that run in well under a millisecond, and models
from flax (linen and nnx), haiku and equinox. Each builder returns a
:class:`UnseenModel`; a builder whose library is missing raises
``ImportError`` and its model is skipped. None of these shapes appear in
``bench/cases.py`` or ``autontk/suite.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass
class UnseenModel:
  """``ntk_fn(f, trace_axes=..., vmap_axes=...)(x1, x2, params)``."""

  f: Callable
  params: Any
  x1: Any
  x2: Any
  trace_axes: tuple[int, ...] = (-1,)
  vmap_axes: Any = 0
  family: str = "plain"
  note: str = ""


MODELS: dict[str, Callable[[], UnseenModel]] = {}


def model(fn: Callable[[], UnseenModel]) -> Callable[[], UnseenModel]:
  MODELS[fn.__name__] = fn
  return fn


def _normal(seed: int, shape, scale: float = 1.0) -> jax.Array:
  return scale * jax.random.normal(jax.random.PRNGKey(seed), shape)


@model
def rnn_scan_h128():
  """tanh RNN, ``lax.scan`` over 20 steps, hidden 128, N = 8×6, full kernel."""
  steps, d_in, hidden, out = 20, 16, 128, 4
  params = {"wx": _normal(0, (d_in, hidden), 0.25),
            "wh": _normal(1, (hidden, hidden), hidden ** -0.5),
            "b": jnp.zeros(hidden), "wo": _normal(2, (hidden, out), 0.1)}

  def f(p, x):
    def step(h, xt):
      return jnp.tanh(xt @ p["wx"] + h @ p["wh"] + p["b"]), None
    h, _ = lax.scan(step, jnp.zeros((x.shape[0], hidden)),
                    jnp.swapaxes(x, 0, 1))
    return h @ p["wo"]

  return UnseenModel(f, params, _normal(3, (8, steps, d_in)),
                     _normal(4, (6, steps, d_in)), trace_axes=(),
                     family="scan", note="the issue's case")


@model
def gru_scan_seq_out():
  """A hand-written GRU over 12 steps whose per-step outputs are averaged."""
  steps, d_in, hidden = 12, 8, 48
  k = iter(range(10, 20))
  params = {g: {"x": _normal(next(k), (d_in, hidden), 0.3),
                "h": _normal(next(k), (hidden, hidden), hidden ** -0.5)}
            for g in ("z", "r", "n")}
  params["out"] = _normal(next(k), (hidden, 3), 0.2)

  def f(p, x):
    def step(h, xt):
      z = jax.nn.sigmoid(xt @ p["z"]["x"] + h @ p["z"]["h"])
      r = jax.nn.sigmoid(xt @ p["r"]["x"] + h @ p["r"]["h"])
      n = jnp.tanh(xt @ p["n"]["x"] + (r * h) @ p["n"]["h"])
      h = (1 - z) * n + z * h
      return h, h @ p["out"]
    _, ys = lax.scan(step, jnp.zeros((x.shape[0], hidden)),
                     jnp.swapaxes(x, 0, 1))
    return ys.mean(0)

  return UnseenModel(f, params, _normal(20, (12, steps, d_in)),
                     _normal(21, (10, steps, d_in)), family="scan")


@model
def scan_over_layers_mlp():
  """Ten layers' weights stacked and scanned over (the scan's xs)."""
  depth, width = 10, 64
  params = {"w": _normal(30, (depth, width, width), width ** -0.5),
            "b": jnp.zeros((depth, width)), "head": _normal(31, (width, 5))}

  def f(p, x):
    def layer(h, wb):
      w, b = wb
      return jax.nn.gelu(h @ w + b), None
    h, _ = lax.scan(layer, x, (p["w"], p["b"]))
    return h @ p["head"]

  return UnseenModel(f, params, _normal(32, (16, width)),
                     _normal(33, (16, width)), trace_axes=(), family="scan")


@model
def fori_weight_tied_residual():
  """A weight-tied residual block applied 8 times with ``fori_loop``."""
  width = 32
  params = {"w": _normal(40, (width, width), width ** -0.5),
            "b": jnp.zeros(width), "head": _normal(41, (width, 2))}

  def f(p, x):
    def block(i, h):
      return h + 0.5 * jnp.tanh(h @ p["w"] + p["b"])
    return lax.fori_loop(0, 8, block, x) @ p["head"]

  return UnseenModel(f, params, _normal(42, (24, width)),
                     _normal(43, (20, width)), trace_axes=(), family="loop")


@model
def deep_narrow_mlp():
  """24 layers of width 16 (a list of dicts), scalar output."""
  depth, width = 24, 16
  params = [{"w": _normal(50 + i, (width, width), width ** -0.5),
             "b": jnp.zeros(width)} for i in range(depth)]
  params.append({"w": _normal(99, (width, 1)), "b": jnp.zeros(1)})

  def f(p, x):
    for layer in p[:-1]:
      x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ p[-1]["w"] + p[-1]["b"]

  return UnseenModel(f, params, _normal(51, (32, width)),
                     _normal(52, (32, width)), family="many-small-ops")


@model
def small_attention_block():
  """One pre-norm self-attention block, 2 heads, T = 8, d = 16 (sub-ms)."""
  t, d, heads = 8, 16, 2
  params = {"qkv": _normal(60, (d, 3 * d), d ** -0.5),
            "proj": _normal(61, (d, d), d ** -0.5),
            "ln": {"g": jnp.ones(d), "b": jnp.zeros(d)},
            "head": _normal(62, (d, 4), 0.3)}

  def f(p, x):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    h = (x - mu) / jnp.sqrt(var + 1e-5) * p["ln"]["g"] + p["ln"]["b"]
    q, k, v = jnp.split(h @ p["qkv"], 3, axis=-1)
    split = lambda a: a.reshape(a.shape[:-1] + (heads, d // heads))
    att = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k)) / (d // heads) ** .5
    y = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(att, -1), split(v))
    x = x + y.reshape(x.shape) @ p["proj"]
    return x.mean(1) @ p["head"]

  return UnseenModel(f, params, _normal(63, (8, t, d)), _normal(64, (8, t, d)),
                     family="many-small-ops")


@model
def small_cnn_pooled():
  """Two 3×3 convolutions (8 channels) on 8×8×3, average-pooled (sub-ms)."""
  conv = lambda x, w: lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  params = {"c1": _normal(70, (3, 3, 3, 8), 0.3),
            "c2": _normal(71, (3, 3, 8, 8), 0.2),
            "out": _normal(72, (8, 3), 0.3)}

  def f(p, x):
    x = jax.nn.relu(conv(x, p["c1"]))
    x = jax.nn.relu(conv(x, p["c2"]))
    return x.mean((1, 2)) @ p["out"]

  return UnseenModel(f, params, _normal(73, (6, 8, 8, 3)),
                     _normal(74, (6, 8, 8, 3)), trace_axes=(),
                     family="sub-ms")


@model
def tiny_mlp_one_sample_pair():
  """A 2-layer MLP on N = 4×4: microseconds of work per call."""
  params = {"w1": _normal(80, (8, 32), 0.3), "w2": _normal(81, (32, 3), 0.2)}

  def f(p, x):
    return jnp.tanh(x @ p["w1"]) @ p["w2"]

  return UnseenModel(f, params, _normal(82, (4, 8)), _normal(83, (4, 8)),
                     trace_axes=(), family="sub-ms")


@model
def flax_linen_mlp_layernorm():
  """flax.linen Dense-LayerNorm-gelu ×2 and a Dense head."""
  import flax.linen as nn  # optional library

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      for width in (64, 64):
        x = nn.gelu(nn.LayerNorm()(nn.Dense(width)(x)))
      return nn.Dense(6)(x)

  net = Net()
  x1, x2 = _normal(90, (16, 20)), _normal(91, (12, 20))
  params = net.init(jax.random.PRNGKey(92), x1)
  return UnseenModel(net.apply, params, x1, x2, family="flax")


@model
def flax_linen_lstm_scan():
  """flax.linen ``nn.RNN(nn.LSTMCell)`` over 10 steps, last state read out."""
  import flax.linen as nn  # optional library

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.RNN(nn.LSTMCell(32))(x)
      return nn.Dense(2)(h[:, -1])

  net = Net()
  x1, x2 = _normal(93, (8, 10, 6)), _normal(94, (8, 10, 6))
  params = net.init(jax.random.PRNGKey(95), x1)
  return UnseenModel(net.apply, params, x1, x2, trace_axes=(), family="flax")


@model
def flax_nnx_split_merge_mlp():
  """A flax.nnx module made functional with ``nnx.split`` / ``nnx.merge``."""
  from flax import nnx  # optional library

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(12, 48, rngs=rngs)
      self.l2 = nnx.Linear(48, 48, rngs=rngs)
      self.l3 = nnx.Linear(48, 4, rngs=rngs)

    def __call__(self, x):
      return self.l3(nnx.silu(self.l2(nnx.silu(self.l1(x)))))

  graphdef, state = nnx.split(Net(nnx.Rngs(96)))

  def f(state, x):
    return nnx.merge(graphdef, state)(x)

  return UnseenModel(f, state, _normal(97, (20, 12)), _normal(98, (20, 12)),
                     family="flax")


@model
def haiku_mlp_residual():
  """haiku ``hk.transform`` MLP with a residual connection."""
  import haiku as hk  # optional library

  def fwd(x):
    h = jax.nn.relu(hk.Linear(40)(x))
    h = h + jax.nn.relu(hk.Linear(40)(h))
    return hk.Linear(5)(h)

  t = hk.without_apply_rng(hk.transform(fwd))
  x1, x2 = _normal(100, (16, 10)), _normal(101, (16, 10))
  return UnseenModel(t.apply, t.init(jax.random.PRNGKey(102), x1), x1, x2,
                     family="haiku")


@model
def equinox_gru_scan():
  """An equinox ``GRUCell`` scanned over 10 steps, one example per call
  (``jax.vmap`` over the batch, as equinox code is written)."""
  import equinox as eqx  # optional library

  class Net(eqx.Module):
    cell: eqx.nn.GRUCell
    head: eqx.nn.Linear

    def __init__(self, key):
      k1, k2 = jax.random.split(key)
      self.cell = eqx.nn.GRUCell(6, 24, key=k1)
      self.head = eqx.nn.Linear(24, 2, key=k2)

    def __call__(self, xs):
      h, _ = lax.scan(lambda h, x: (self.cell(x, h), None), jnp.zeros(24),
                      xs)
      return self.head(h)

  net = Net(jax.random.PRNGKey(103))

  def f(net, x):
    return jax.vmap(net)(x)

  return UnseenModel(f, net, _normal(104, (10, 10, 6)),
                     _normal(105, (10, 10, 6)), trace_axes=(),
                     family="equinox")
