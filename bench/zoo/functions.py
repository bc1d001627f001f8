"""Models written as users write them: a JAX function and its pytrees.

* :data:`UNSEEN`: models the cost model was not tuned on (the
  ``regret_unseen`` suite): plain JAX with ``lax.scan`` / ``fori_loop``,
  deep narrow MLPs, small attention and CNN blocks that run in well under a
  millisecond, and models from flax (linen and nnx), haiku and equinox. A
  builder whose library is missing raises ``ImportError`` (the model is
  skipped). None of these shapes appear in :mod:`bench.cases` or
  ``autontk/suite.py``.
* :func:`option_models`: a deep MLP, a CNN and an attention block whose last
  layer is one leaf (the ``kernels`` and ``precision`` suites).
* :data:`OVERHEAD`: small models with pytree inputs and keyword arguments
  (the ``overhead`` suite).
* :func:`tiled_cnn`: the small CNN of the ``tiled`` suite.

>>> m = UNSEEN["tiny_mlp_one_sample_pair"]()
>>> m.f(m.params, m.x1).shape
(4, 3)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass
class Model:
  """``ntk_fn(f, trace_axes=..., vmap_axes=...)(x1, x2, params, **kwargs)``.

  ``last``: the path of the last layer's parameters (for ``wrt=``).
  """

  f: Callable
  params: Any
  x1: Any
  x2: Any
  trace_axes: tuple[int, ...] = (-1,)
  vmap_axes: Any = 0
  diagonal_axes: tuple[int, ...] = ()
  family: str = "plain"
  note: str = ""
  kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  last: str | None = None


UNSEEN: dict[str, Callable[[], Model]] = {}


def model(fn: Callable[[], Model]) -> Callable[[], Model]:
  UNSEEN[fn.__name__] = fn
  return fn


def normal(seed: int, shape, scale: float = 1.0) -> jax.Array:
  """``scale`` times a standard normal array from ``PRNGKey(seed)``."""
  return scale * jax.random.normal(jax.random.PRNGKey(seed), shape)


@model
def rnn_scan_h128():
  """tanh RNN, ``lax.scan`` over 20 steps, hidden 128, N = 8×6, full kernel."""
  steps, d_in, hidden, out = 20, 16, 128, 4
  params = {"wx": normal(0, (d_in, hidden), 0.25),
            "wh": normal(1, (hidden, hidden), hidden ** -0.5),
            "b": jnp.zeros(hidden), "wo": normal(2, (hidden, out), 0.1)}

  def f(p, x):
    def step(h, xt):
      return jnp.tanh(xt @ p["wx"] + h @ p["wh"] + p["b"]), None
    h, _ = lax.scan(step, jnp.zeros((x.shape[0], hidden)),
                    jnp.swapaxes(x, 0, 1))
    return h @ p["wo"]

  return Model(f, params, normal(3, (8, steps, d_in)),
                     normal(4, (6, steps, d_in)), trace_axes=(),
                     family="scan")


@model
def gru_scan_seq_out():
  """A hand-written GRU over 12 steps whose per-step outputs are averaged."""
  steps, d_in, hidden = 12, 8, 48
  k = iter(range(10, 20))
  params = {g: {"x": normal(next(k), (d_in, hidden), 0.3),
                "h": normal(next(k), (hidden, hidden), hidden ** -0.5)}
            for g in ("z", "r", "n")}
  params["out"] = normal(next(k), (hidden, 3), 0.2)

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

  return Model(f, params, normal(20, (12, steps, d_in)),
                     normal(21, (10, steps, d_in)), family="scan")


@model
def scan_over_layers_mlp():
  """Ten layers' weights stacked and scanned over (the scan's xs)."""
  depth, width = 10, 64
  params = {"w": normal(30, (depth, width, width), width ** -0.5),
            "b": jnp.zeros((depth, width)), "head": normal(31, (width, 5))}

  def f(p, x):
    def layer(h, wb):
      w, b = wb
      return jax.nn.gelu(h @ w + b), None
    h, _ = lax.scan(layer, x, (p["w"], p["b"]))
    return h @ p["head"]

  return Model(f, params, normal(32, (16, width)),
                     normal(33, (16, width)), trace_axes=(), family="scan")


@model
def fori_weight_tied_residual():
  """A weight-tied residual block applied 8 times with ``fori_loop``."""
  width = 32
  params = {"w": normal(40, (width, width), width ** -0.5),
            "b": jnp.zeros(width), "head": normal(41, (width, 2))}

  def f(p, x):
    def block(i, h):
      return h + 0.5 * jnp.tanh(h @ p["w"] + p["b"])
    return lax.fori_loop(0, 8, block, x) @ p["head"]

  return Model(f, params, normal(42, (24, width)),
                     normal(43, (20, width)), trace_axes=(), family="loop")


@model
def deep_narrow_mlp():
  """24 layers of width 16 (a list of dicts), scalar output."""
  depth, width = 24, 16
  params = [{"w": normal(50 + i, (width, width), width ** -0.5),
             "b": jnp.zeros(width)} for i in range(depth)]
  params.append({"w": normal(99, (width, 1)), "b": jnp.zeros(1)})

  def f(p, x):
    for layer in p[:-1]:
      x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ p[-1]["w"] + p[-1]["b"]

  return Model(f, params, normal(51, (32, width)),
                     normal(52, (32, width)), family="many-small-ops")


@model
def small_attention_block():
  """One pre-norm self-attention block, 2 heads, T = 8, d = 16 (sub-ms)."""
  t, d, heads = 8, 16, 2
  params = {"qkv": normal(60, (d, 3 * d), d ** -0.5),
            "proj": normal(61, (d, d), d ** -0.5),
            "ln": {"g": jnp.ones(d), "b": jnp.zeros(d)},
            "head": normal(62, (d, 4), 0.3)}

  def f(p, x):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    h = (x - mu) / jnp.sqrt(var + 1e-5) * p["ln"]["g"] + p["ln"]["b"]
    q, k, v = jnp.split(h @ p["qkv"], 3, axis=-1)
    split = lambda a: a.reshape(a.shape[:-1] + (heads, d // heads))
    att = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k)) / (d // heads) ** .5
    y = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(att, -1), split(v))
    x = x + y.reshape(x.shape) @ p["proj"]
    return x.mean(1) @ p["head"]

  return Model(f, params, normal(63, (8, t, d)), normal(64, (8, t, d)),
                     family="many-small-ops")


@model
def small_cnn_pooled():
  """Two 3×3 convolutions (8 channels) on 8×8×3, average-pooled (sub-ms)."""
  conv = lambda x, w: lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  params = {"c1": normal(70, (3, 3, 3, 8), 0.3),
            "c2": normal(71, (3, 3, 8, 8), 0.2),
            "out": normal(72, (8, 3), 0.3)}

  def f(p, x):
    x = jax.nn.relu(conv(x, p["c1"]))
    x = jax.nn.relu(conv(x, p["c2"]))
    return x.mean((1, 2)) @ p["out"]

  return Model(f, params, normal(73, (6, 8, 8, 3)),
                     normal(74, (6, 8, 8, 3)), trace_axes=(),
                     family="sub-ms")


@model
def tiny_mlp_one_sample_pair():
  """A 2-layer MLP on N = 4×4: microseconds of work per call."""
  params = {"w1": normal(80, (8, 32), 0.3), "w2": normal(81, (32, 3), 0.2)}

  def f(p, x):
    return jnp.tanh(x @ p["w1"]) @ p["w2"]

  return Model(f, params, normal(82, (4, 8)), normal(83, (4, 8)),
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
  x1, x2 = normal(90, (16, 20)), normal(91, (12, 20))
  params = net.init(jax.random.PRNGKey(92), x1)
  return Model(net.apply, params, x1, x2, family="flax")


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
  x1, x2 = normal(93, (8, 10, 6)), normal(94, (8, 10, 6))
  params = net.init(jax.random.PRNGKey(95), x1)
  return Model(net.apply, params, x1, x2, trace_axes=(), family="flax")


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

  return Model(f, state, normal(97, (20, 12)), normal(98, (20, 12)),
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
  x1, x2 = normal(100, (16, 10)), normal(101, (16, 10))
  return Model(t.apply, t.init(jax.random.PRNGKey(102), x1), x1, x2,
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

  return Model(f, net, normal(104, (10, 10, 6)),
                     normal(105, (10, 10, 6)), trace_axes=(),
                     family="equinox")


# Kernel options: models whose last layer is one leaf ---------------------------


def deep_mlp(depth: int, width: int, d_in: int, n_out: int, n: int) -> Model:
  """``depth`` tanh layers as a list of dicts; the last is ``str(depth-1)``."""
  dims = [d_in] + [width] * (depth - 1) + [n_out]
  params = [{"w": normal(i, (a, b), a ** -0.5), "b": jnp.zeros(b)}
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))]

  def f(p, x):
    for layer in p[:-1]:
      x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ p[-1]["w"] + p[-1]["b"]

  x = normal(99, (n, d_in))
  return Model(f, params, x, None, trace_axes=(-1,), family="mlp",
               last=str(len(params) - 1))


def conv_net(channels: tuple[int, ...], hw: int, n_out: int, n: int) -> Model:
  """3×3 convolutions (relu), global average pool, a dense ``head``."""
  params = {}
  c_in = 3
  for i, c in enumerate(channels):
    params[f"conv{i}"] = {"w": normal(i, (3, 3, c_in, c), (9 * c_in) ** -.5),
                          "b": jnp.zeros(c)}
    c_in = c
  params["head"] = {"w": normal(50, (c_in, n_out), c_in ** -0.5),
                    "b": jnp.zeros(n_out)}
  dn = ("NHWC", "HWIO", "NHWC")

  def f(p, x):
    for i in range(len(channels)):
      layer = p[f"conv{i}"]
      x = lax.conv_general_dilated(x, layer["w"], (1, 1), "SAME",
                                   dimension_numbers=dn) + layer["b"]
      x = jax.nn.relu(x)
    x = x.mean(axis=(1, 2))
    return x @ p["head"]["w"] + p["head"]["b"]

  return Model(f, params, normal(98, (n, hw, hw, 3)), None, family="cnn",
               last="head")


def attention_block(t: int, d: int, n_out: int, n: int) -> Model:
  """Embedding, one self-attention and one MLP residual block, a ``head``."""
  params = {"emb": {"w": normal(0, (8, d), 8 ** -0.5)},
            "attn": {k: normal(i + 1, (d, d), d ** -0.5)
                     for i, k in enumerate(("q", "k", "v"))},
            "mlp": {"w": normal(5, (d, 2 * d), d ** -0.5),
                    "v": normal(6, (2 * d, d), (2 * d) ** -0.5)},
            "head": {"w": normal(7, (d, n_out), d ** -0.5)}}

  def f(p, x):
    h = x @ p["emb"]["w"]
    q, k, v = (h @ p["attn"][c] for c in "qkv")
    a = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / d ** 0.5, axis=-1)
    h = h + a @ v
    h = h + jax.nn.gelu(h @ p["mlp"]["w"]) @ p["mlp"]["v"]
    return h.mean(axis=-2) @ p["head"]["w"]

  return Model(f, params, normal(97, (n, t, 8)), None, family="attention",
               last="head")


def option_models(quick: bool) -> dict[str, Model]:
  """The ``kernels`` suite's models (``x2 = None``)."""
  if quick:
    return {"mlp_d8_w256": deep_mlp(8, 256, 64, 10, 32),
            "mlp_d3_w1024_o1": deep_mlp(3, 1024, 32, 1, 64),
            "cnn_3x32_16px": conv_net((16, 32, 32), 16, 10, 16),
            "attention_t8_d32": attention_block(8, 32, 10, 16)}
  return {"mlp_d16_w1024": deep_mlp(16, 1024, 256, 10, 64),
          "mlp_d3_w4096_o1": deep_mlp(3, 4096, 32, 1, 256),
          "cnn_4x64_32px": conv_net((32, 64, 64, 64), 32, 10, 32),
          "attention_t32_d128": attention_block(32, 128, 10, 32)}


# Per-call overhead: small models, pytree inputs, keyword arguments ------------


def overhead_mlp() -> Model:
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  p = {"w1": jax.random.normal(k[0], (16, 64)) / 4,
       "w2": jax.random.normal(k[1], (64, 4)) / 8}
  return Model(lambda p, x: jnp.tanh(x @ p["w1"]) @ p["w2"], p,
               jax.random.normal(k[2], (8, 16)), None, trace_axes=(),
               note="mlp_16_64_4_n8")


def overhead_attention() -> Model:
  k = jax.random.split(jax.random.PRNGKey(1), 4)
  d = 16
  p = {n: jax.random.normal(kk, (d, d)) / 4 for n, kk in zip("qkv", k[:3])}

  def f(p, x):
    q, kk, v = x @ p["q"], x @ p["k"], x @ p["v"]
    a = jax.nn.softmax(q @ jnp.swapaxes(kk, -1, -2) / d ** 0.5, axis=-1)
    return jnp.mean(a @ v, axis=-2)

  return Model(f, p, jax.random.normal(k[3], (4, 6, d)), None,
               note="attention_d16_n4")


def overhead_pytree_kwargs() -> Model:
  """Dict inputs, an array keyword and a Python keyword; the default axes."""
  k = jax.random.split(jax.random.PRNGKey(2), 3)
  p = {"a": jax.random.normal(k[0], (8, 32)) / 3,
       "b": jax.random.normal(k[1], (8, 32)) / 3,
       "out": jax.random.normal(k[2], (32, 3)) / 6}
  x = {"u": jnp.ones((6, 8)), "v": jnp.ones((6, 8)) * 0.5}

  def f(p, x, scale, train=True):
    h = jnp.tanh(x["u"] @ p["a"] + x["v"] @ p["b"]) * scale
    return h @ p["out"] if train else h[:, :3]

  return Model(f, p, x, None, vmap_axes=None,
               kwargs={"scale": jnp.float32(0.7), "train": True},
               note="pytree_inputs_and_kwargs")


def overhead_rnn() -> Model:
  k = jax.random.split(jax.random.PRNGKey(3), 3)
  h = 32
  p = {"w": jax.random.normal(k[0], (h, h)) / h ** 0.5,
       "u": jax.random.normal(k[1], (4, h)) / 2,
       "o": jax.random.normal(k[2], (h, 2)) / h ** 0.5}

  def f(p, x):
    def step(s, xt):
      return jnp.tanh(s @ p["w"] + xt @ p["u"]), None
    s, _ = lax.scan(step, jnp.zeros((x.shape[0], h)), jnp.swapaxes(x, 0, 1))
    return s @ p["o"]

  return Model(f, p, jnp.ones((4, 10, 4)), None, trace_axes=(),
               note="rnn_scan_10")


OVERHEAD = (overhead_mlp, overhead_attention, overhead_pytree_kwargs,
            overhead_rnn)


# The tiled suite's small CNN ----------------------------------------------------


def tiled_cnn(image: int = 8, channels: int = 3, width: int = 8,
              classes: int = 10, seed: int = 0):
  """``(f, params)``: conv 3×3 (C→width) · relu · conv 3×3 stride 2 · relu ·
  global average pool · dense (width→classes), on ``image²×channels``."""
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = {
      "c1": (jax.random.normal(k[0], (3, 3, channels, width)) /
             (9 * channels) ** 0.5),
      "b1": jnp.zeros((width,)),
      "c2": jax.random.normal(k[1], (3, 3, width, width)) / (9 * width) ** 0.5,
      "b2": jnp.zeros((width,)),
      "w": jax.random.normal(k[2], (width, classes)) / width ** 0.5,
      "b": jnp.zeros((classes,)),
  }
  dn = ("NHWC", "HWIO", "NHWC")

  def f(p, x):
    y = lax.conv_general_dilated(x, p["c1"], (1, 1), "SAME",
                                 dimension_numbers=dn) + p["b1"]
    y = jax.nn.relu(y)
    y = lax.conv_general_dilated(y, p["c2"], (2, 2), "SAME",
                                 dimension_numbers=dn) + p["b2"]
    y = jax.nn.relu(y)
    return jnp.mean(y, axis=(1, 2)) @ p["w"] + p["b"]

  return f, params


def tiled_data(n: int, image: int = 8, channels: int = 3, seed: int = 1):
  return jax.random.normal(jax.random.PRNGKey(seed),
                           (n, image, image, channels))
