"""A zoo of small models for the tests: plain JAX, flax, haiku and equinox.

Each factory returns a :class:`Case`: ``f(params, x, **kwargs)``, ``params``,
inputs ``x1``/``x2`` and the kwargs to pass. Shapes are tiny so compiles stay
fast; the families cover what the methods must handle: dense and conv layers,
attention with LayerNorm, pytree params/inputs/outputs, kwargs and rng,
``lax.scan``, ``jax.checkpoint``, ``cond``, tied weights, embeddings.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

import helpers


@dataclasses.dataclass
class Case:
  name: str
  f: Callable[..., Any]
  params: Any
  x1: Any
  x2: Any
  kwargs: dict = dataclasses.field(default_factory=dict)
  vmap_ok: bool = True  # f treats examples independently along axis 0


def _keys(seed: int, n: int) -> list[int]:
  """Seeds of a model's random arrays (see :func:`helpers.rand`)."""
  return [seed * 1000 + i for i in range(n)]


def _normal(key: int, shape, scale=1.0) -> jax.Array:
  return helpers.rand(key, shape, scale)


def _jax_key(key: int) -> jax.Array:
  """A JAX key for a library's initialiser."""
  return jax.random.PRNGKey(key)


def mlp(n1=3, n2=2, d=4, widths=(5, 3), act=jnp.tanh, seed=0) -> Case:
  ks = _keys(seed, 2 * len(widths) + 2)
  dims = (d,) + tuple(widths)
  params = [{"w": _normal(ks[2 * i], (a, b), a ** -0.5),
             "b": _normal(ks[2 * i + 1], (b,), 0.1)}
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:]))]

  def f(p, x):
    for i, layer in enumerate(p):
      x = x @ layer["w"] + layer["b"]
      if i < len(p) - 1:
        x = act(x)
    return x

  return Case("mlp", f, params, _normal(ks[-2], (n1, d)),
              _normal(ks[-1], (n2, d)))


def sequence_mlp(n1=2, n2=3, t=3, d=2, o=2, seed=1) -> Case:
  """Output of rank 3 (N, T, O): exercises every axes option."""
  ks = _keys(seed, 4)
  params = (_normal(ks[0], (d, 4)), _normal(ks[1], (4, o)))

  def f(p, x):
    return jnp.sin(x @ p[0]) @ p[1]

  return Case("sequence_mlp", f, params, _normal(ks[2], (n1, t, d)),
              _normal(ks[3], (n2, t, d)))


def cnn(padding="SAME", strides=(1, 1), seed=2) -> Case:
  ks = _keys(seed, 5)
  params = {"conv1": _normal(ks[0], (3, 3, 2, 3), 0.3),
            "conv2": _normal(ks[1], (2, 2, 3, 2), 0.3),
            "dense": _normal(ks[2], (2 * 2 * 2 if strides == (2, 2) and
                                     padding == "VALID" else 0, 3), 0.3)}
  x1 = _normal(ks[3], (2, 6, 6, 2))
  x2 = _normal(ks[4], (3, 6, 6, 2))
  dn = ("NHWC", "HWIO", "NHWC")

  def features(p, x):
    y = lax.conv_general_dilated(x, p["conv1"], strides, padding,
                                 dimension_numbers=dn)
    y = jax.nn.relu(y)
    y = lax.conv_general_dilated(y, p["conv2"], (1, 1), padding,
                                 dimension_numbers=dn)
    return y.reshape(y.shape[0], -1)

  flat = jax.eval_shape(features, params, x1).shape[-1]
  params["dense"] = _normal(ks[2], (flat, 3), flat ** -0.5)

  def f(p, x):
    return jnp.tanh(features(p, x)) @ p["dense"]

  return Case(f"cnn_{padding}_{strides[0]}", f, params, x1, x2)


def _layer_norm(x, scale, bias, eps=1e-5):
  mu = jnp.mean(x, -1, keepdims=True)
  var = jnp.mean((x - mu) ** 2, -1, keepdims=True)
  return (x - mu) * lax.rsqrt(var + eps) * scale + bias


def attention(n1=2, n2=2, t=3, d=4, seed=3) -> Case:
  ks = _keys(seed, 8)
  params = {"q": _normal(ks[0], (d, d), d ** -0.5),
            "k": _normal(ks[1], (d, d), d ** -0.5),
            "v": _normal(ks[2], (d, d), d ** -0.5),
            "ln": {"scale": 1 + _normal(ks[3], (d,), 0.1),
                   "bias": _normal(ks[4], (d,), 0.1)},
            "out": _normal(ks[5], (d, 2), d ** -0.5)}

  def f(p, x):
    h = _layer_norm(x, p["ln"]["scale"], p["ln"]["bias"])
    q, k, v = h @ p["q"], h @ p["k"], h @ p["v"]
    a = jax.nn.softmax(jnp.einsum("ntd,nsd->nts", q, k) / d ** 0.5, axis=-1)
    y = x + jnp.einsum("nts,nsd->ntd", a, v)
    return jnp.mean(y, axis=1) @ p["out"]

  return Case("attention", f, params, _normal(ks[6], (n1, t, d)),
              _normal(ks[7], (n2, t, d)))


def pytree_io(seed=4) -> Case:
  """Dict input, tuple/list params, dict-of-tuple output with mixed ranks."""
  ks = _keys(seed, 7)
  params = ([_normal(ks[0], (3, 4)), _normal(ks[1], (2, 4))],
            {"head_a": _normal(ks[2], (4, 2)), "head_b": _normal(ks[3], (4,)),
             "count": jnp.int32(7)})

  def f(p, x):
    h = jnp.tanh(x["a"] @ p[0][0] + x["b"] @ p[0][1])
    return {"logits": h @ p[1]["head_a"],
            "aux": (jnp.sum(h * p[1]["head_b"], -1, keepdims=True) *
                    p[1]["count"].astype(h.dtype), h[:, :2] ** 2)}

  x1 = {"a": _normal(ks[4], (2, 3)), "b": _normal(ks[5], (2, 2))}
  x2 = {"a": _normal(ks[6], (3, 3)), "b": jnp.ones((3, 2))}
  return Case("pytree_io", f, params, x1, x2)


def dropout_kwargs(seed=5) -> Case:
  """kwargs: an rng key (split between x1/x2), a 2-tuple and a shared flag."""
  ks = _keys(seed, 4)
  params = {"w": _normal(ks[0], (3, 5)), "v": _normal(ks[1], (5, 2))}

  def f(p, x, rng=None, shift=0.0, train=True):
    h = jnp.tanh(x @ p["w"] + shift)
    if train and rng is not None:
      keep = jax.random.bernoulli(rng, 0.7, h.shape)
      h = jnp.where(keep, h / 0.7, 0.0)
    return h @ p["v"]

  return Case("dropout_kwargs", f, params, _normal(ks[2], (2, 3)),
              _normal(ks[3], (3, 3)),
              kwargs={"rng": jax.random.PRNGKey(11),
                      "shift": (jnp.float32(0.5), jnp.float32(-0.25)),
                      "train": True},
              vmap_ok=False)


def scan_rnn(seed=6) -> Case:
  ks = _keys(seed, 5)
  params = {"wx": _normal(ks[0], (2, 4), 0.5), "wh": _normal(ks[1], (4, 4), 0.5),
            "out": _normal(ks[2], (4, 2), 0.5)}

  def f(p, x):  # x: (N, T, 2)
    def step(h, xt):
      h = jnp.tanh(xt @ p["wx"] + h @ p["wh"])
      return h, h

    h0 = jnp.zeros((x.shape[0], 4), x.dtype)
    h, _ = lax.scan(step, h0, jnp.swapaxes(x, 0, 1))
    return h @ p["out"]

  return Case("scan_rnn", f, params, _normal(ks[3], (2, 3, 2)),
              _normal(ks[4], (3, 3, 2)))


def checkpoint_cond(seed=7) -> Case:
  ks = _keys(seed, 4)
  params = {"w1": _normal(ks[0], (3, 4)), "w2": _normal(ks[1], (4, 2))}

  @jax.checkpoint
  def block(w, x):
    return jnp.sin(x @ w)

  def f(p, x):
    h = block(p["w1"], x)
    h = lax.cond(jnp.sum(x) > 0, lambda h: h * 2.0, jnp.cos, h)
    return h @ p["w2"]

  return Case("checkpoint_cond", f, params, _normal(ks[2], (2, 3)),
              _normal(ks[3], (2, 3)), vmap_ok=False)


def tied_embedding(seed=8) -> Case:
  """Embedding lookup (gather) with the output layer tied to the table."""
  ks = _keys(seed, 3)
  params = {"emb": _normal(ks[0], (7, 4)), "w": _normal(ks[1], (4, 4))}

  def f(p, tokens):
    h = p["emb"][tokens]             # (N, T, 4)
    h = jnp.tanh(h @ p["w"]).mean(1)  # (N, 4)
    return h @ p["emb"].T             # (N, 7): tied weights

  x1 = jnp.array([[1, 2, 3], [0, 6, 6]], jnp.int32)
  x2 = jnp.array([[4, 5, 1], [2, 2, 2], [6, 0, 3]], jnp.int32)
  del ks
  return Case("tied_embedding", f, params, x1, x2)


def flax_cnn(seed=9) -> Case:
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      x = nn.Conv(3, (3, 3), strides=(2, 2), padding="VALID")(x)
      x = nn.LayerNorm()(x)
      x = nn.gelu(x)
      x = x.reshape((x.shape[0], -1))
      return nn.Dense(2)(x)

  ks = _keys(seed, 3)
  x1 = _normal(ks[0], (2, 5, 5, 1))
  x2 = _normal(ks[1], (3, 5, 5, 1))
  net = Net()
  params = jax.jit(net.init)(_jax_key(ks[2]), x1)

  def f(p, x, **kw):
    return net.apply(p, x, **kw)

  return Case("flax_cnn", f, params, x1, x2, kwargs={"train": False})


def haiku_mlp(seed=10) -> Case:
  import haiku as hk

  def fwd(x):
    return hk.nets.MLP([5, 3], activation=jax.nn.softplus)(x)

  t = hk.without_apply_rng(hk.transform(fwd))
  ks = _keys(seed, 3)
  x1 = _normal(ks[0], (3, 4))
  x2 = _normal(ks[1], (2, 4))
  params = jax.jit(t.init)(_jax_key(ks[2]), x1)
  return Case("haiku_mlp", t.apply, params, x1, x2)


def equinox_mlp(seed=11) -> Case:
  import equinox as eqx

  ks = _keys(seed, 3)
  model = eqx.nn.MLP(4, 3, 5, 2, activation=jax.nn.relu,
                      key=_jax_key(ks[0]))
  params, static = eqx.partition(model, eqx.is_array)

  def f(p, x):
    return jax.vmap(eqx.combine(p, static))(x)

  return Case("equinox_mlp", f, params, _normal(ks[1], (2, 4)),
              _normal(ks[2], (3, 4)))


def ALL() -> list[Case]:
  return [mlp(), sequence_mlp(), cnn("SAME", (1, 1)), cnn("VALID", (2, 2)),
          attention(), pytree_io(), dropout_kwargs(), scan_rnn(),
          checkpoint_cond(), tied_embedding(), flax_cnn(), haiku_mlp(),
          equinox_mlp()]
