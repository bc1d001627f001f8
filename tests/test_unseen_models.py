"""Models none of the other test files use, every method against the reference.

A sweep over NN libraries (flax linen, flax nnx, haiku, equinox, plain JAX),
control flow (``cond``, ``switch``, ``scan``, ``fori_loop``, ``while_loop``),
``jax.checkpoint``, ``custom_jvp`` / ``custom_vjp``, pytree inputs and outputs,
kwargs (arrays, keys, Python values) and unusual axes (a batch axis that is not
0, pytree ``vmap_axes``, traced leading non-batch axes, negative axes); then
Python constants inside ``params`` (through every execution path) and the
errors bad inputs must raise.

Every kernel is compared with the full Jacobian of the flattened float
parameters contracted by ``reference.contract`` (NumPy), at 1e-4 relative to
the kernel's largest entry. The Jacobians are computed once per model (jitted:
they are the slow part) and reused for every axes option. The fast sweep
checks three axes options per model (see ``_runs``); ``-m slow`` checks
every axes option both with and without ``vmap_axes``, for every method.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import autontk
import helpers
from helpers import assert_kernels_close, split_kwargs_by_hand
from reference import contract, jacobians

EXPLICIT = ["jacobian_contraction", "ntk_vector_products",
            "structured_derivatives"]
IMPLS = EXPLICIT + ["auto"]


def _rand(seed, shape, scale=1.0):
  return helpers.rand(seed, shape, scale)


# Axes options: (trace_axes, diagonal_axes, pass x2). A traced or diagonal
# batch axis needs N1 == N2, so those options use x2=None.
FULL = ((), (), True)
TRACE_LAST = ((-1,), (), True)
DIAG_LAST = ((), (-1,), True)
DIAG_BATCH = ((-1,), (0,), False)
DEFAULT_AXES = (TRACE_LAST, FULL, DIAG_BATCH, DIAG_LAST)


@dataclasses.dataclass
class Model:
  """One model: ``f(params, x, **kwargs)``, inputs and what to check.

  Attributes:
    vmap_axes: the ``vmap_axes`` that fit f (checked besides ``None``), or
      ``None`` when f mixes examples.
    axes: the (trace_axes, diagonal_axes, pass x2) options to check; the
      first three are the fast sweep's.
    warns: f has no reverse mode; ntk_vector_products warns and falls back.
  """

  f: Callable[..., Any]
  params: Any
  x1: Any
  x2: Any
  kwargs: dict = dataclasses.field(default_factory=dict)
  vmap_axes: Any = 0
  axes: tuple = DEFAULT_AXES
  warns: bool = False


MODELS: dict[str, Callable[[], Model]] = {}
SLOW: set[str] = set()


def model(fn=None, *, slow=False):
  def wrap(fn):
    MODELS[fn.__name__] = fn
    if slow:
      SLOW.add(fn.__name__)
    return fn
  return wrap if fn is None else wrap(fn)


# Libraries ---------------------------------------------------------------------


@model(slow=True)
def flax_linen_bn_dropout():
  """BatchNorm in inference mode and Dropout off, both driven by a kwarg."""
  nn = pytest.importorskip("flax.linen")

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
      x = nn.Conv(3, (2, 2), strides=(1, 1), padding="VALID")(x)
      x = nn.BatchNorm(use_running_average=not train)(x)
      x = nn.Dropout(0.5, deterministic=not train)(x)
      x = nn.avg_pool(nn.relu(x), (2, 2), strides=(1, 1))
      x = x.reshape((x.shape[0], -1))
      return nn.Dense(2)(nn.swish(nn.Dense(4)(x)))

  net = Net()
  x1, x2 = _rand(1, (2, 4, 4, 1)), _rand(2, (3, 4, 4, 1))
  variables = net.init(jax.random.PRNGKey(0), x1)
  # Non-trivial running statistics.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, v: (jnp.abs(v) + 0.5 if "var" in str(path) else
                       v + 0.3 if "mean" in str(path) else v), variables)

  def f(p, x, train=False):
    return net.apply(p, x, train=train)

  return Model(f, variables, x1, x2, kwargs={"train": False})


@model(slow=True)
def flax_nnx_split_merge():
  """nnx module made functional; its state holds RNG keys and counters."""
  nnx = pytest.importorskip("flax.nnx")

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(3, 5, rngs=rngs)
      self.ln = nnx.LayerNorm(5, rngs=rngs)
      self.drop = nnx.Dropout(0.3, rngs=rngs)
      self.l2 = nnx.Linear(5, 2, rngs=rngs)

    def __call__(self, x):
      h = nnx.gelu(self.ln(self.l1(x)))
      return self.l2(self.drop(h, deterministic=True))

  graphdef, state = nnx.split(Net(nnx.Rngs(0)))

  def f(s, x):
    return nnx.merge(graphdef, s)(x)

  return Model(f, state, _rand(3, (3, 3)), _rand(4, (2, 3)))


@model(slow=True)
def haiku_transform_with_state():
  """hk.transform_with_state with BatchNorm in test mode; state closed over."""
  hk = pytest.importorskip("haiku")

  def fwd(x, is_training=False):
    h = hk.Linear(4)(x)
    h = hk.BatchNorm(True, True, 0.9)(h, is_training=is_training)
    h = jax.nn.softplus(h)
    return hk.Linear(3)(h)

  t = hk.without_apply_rng(hk.transform_with_state(fwd))
  x1, x2 = _rand(5, (3, 3)), _rand(6, (2, 3))
  params, state = t.init(jax.random.PRNGKey(0), x1, is_training=True)
  state = jax.tree.map(lambda v: v + 0.25, state)

  def f(p, x, is_training=False):
    return t.apply(p, state, x, is_training=is_training)[0]

  return Model(f, params, x1, x2, kwargs={"is_training": False})


@model(slow=True)
def haiku_lstm_unroll():
  """hk.LSTM through hk.dynamic_unroll (a scan), time-major inputs."""
  hk = pytest.importorskip("haiku")

  def fwd(x):  # x: (T, N, 2)
    core = hk.LSTM(3)
    out, _ = hk.dynamic_unroll(core, x, core.initial_state(x.shape[1]))
    return hk.Linear(2)(out[-1])

  t = hk.without_apply_rng(hk.transform(fwd))
  x1, x2 = _rand(7, (3, 2, 2)), _rand(8, (3, 3, 2))
  params = t.init(jax.random.PRNGKey(1), x1)
  # Batch on axis 1 of x, axis 0 of the output.
  return Model(t.apply, params, x1, x2, vmap_axes=(1, 0, {}),
               axes=(TRACE_LAST, FULL, DIAG_BATCH))


@model(slow=True)
def equinox_mixed_leaves():
  """The whole eqx module as params: int, bool and int-array leaves inside."""
  eqx = pytest.importorskip("equinox")

  class Net(eqx.Module):
    lin: eqx.nn.Linear
    conv: eqx.nn.Conv1d
    norm: eqx.nn.LayerNorm
    steps: int
    use_bias: bool
    perm: jax.Array

    def __init__(self, key):
      k1, k2 = jax.random.split(key)
      self.conv = eqx.nn.Conv1d(2, 3, 2, key=k1)
      self.norm = eqx.nn.LayerNorm(9)
      self.lin = eqx.nn.Linear(9, 2, key=k2)
      self.steps = 2
      self.use_bias = True
      self.perm = jnp.array([2, 0, 1], jnp.int32)

    def __call__(self, x):  # one example: (2, 4)
      h = self.conv(x)[self.perm]          # (3, 3), rows permuted
      for _ in range(self.steps):
        h = jnp.tanh(h)
      h = self.norm(h.reshape(-1))
      y = self.lin(h)
      return y + 1.0 if self.use_bias else y

  net = Net(jax.random.PRNGKey(2))

  def f(m, x):
    return jax.vmap(m)(x)

  return Model(f, net, _rand(9, (2, 2, 4)), _rand(10, (3, 2, 4)))


@model(slow=True)
def equinox_partition_attention():
  """eqx.partition/combine around MultiheadAttention with a causal mask."""
  eqx = pytest.importorskip("equinox")
  att = eqx.nn.MultiheadAttention(2, 4, key=jax.random.PRNGKey(3))
  params, static = eqx.partition(att, eqx.is_inexact_array)
  mask = jnp.tril(jnp.ones((3, 3), bool))

  def f(p, x):
    m = eqx.combine(p, static)
    return jax.vmap(lambda xi: m(xi, xi, xi, mask=mask))(x)  # (N, T, 4)

  return Model(f, params, _rand(11, (2, 3, 4)), _rand(12, (3, 3, 4)),
               axes=(TRACE_LAST, DIAG_LAST, ((1, 2), (), True),
                     ((-1,), (0, 1), False)))


# Control flow, remat, custom derivatives ------------------------------------------


@model(slow=True)
def cond_switch_per_example():
  """Data-dependent lax.cond and lax.switch (become selects under vmap)."""
  w = {"a": _rand(13, (3, 4)), "b": _rand(14, (4, 2)), "c": _rand(15, (4, 2))}

  def one(p, x):
    h = x @ p["a"]
    h = lax.cond(x.sum() > 0, jnp.tanh, jnp.sin, h)
    i = jnp.clip(jnp.floor(x[0]).astype(jnp.int32) + 1, 0, 2)
    return lax.switch(i, [lambda h: h @ p["b"], lambda h: h @ p["c"],
                          lambda h: (h * h) @ p["b"]], h)

  def f(p, x):
    return jax.vmap(one, (None, 0))(p, x)

  x1 = jnp.array([[0.5, -1.0, 0.2], [-1.5, 0.3, -0.4], [1.2, 0.1, 0.9]])
  x2 = jnp.array([[-0.7, 0.6, 0.8], [0.2, -0.2, -0.3]])
  return Model(f, w, x1, x2)


@model(slow=True)
def fori_loop_static_and_checkpoint():
  """fori_loop with static bounds (a scan) over a checkpointed block."""
  p = {"w": _rand(16, (4, 4), 0.5), "b": _rand(17, (4,)),
       "out": _rand(18, (4, 3))}

  @functools.partial(jax.checkpoint,
                     policy=jax.checkpoint_policies.nothing_saveable)
  def block(w, b, h):
    return jnp.tanh(h @ w + b)

  def f(p, x):
    h = lax.fori_loop(0, 3, lambda i, h: block(p["w"], p["b"] * i, h), x)
    return jax.remat(lambda h: jax.nn.gelu(h, approximate=False))(h) @ p["out"]

  return Model(f, p, _rand(19, (2, 4)), _rand(20, (3, 4)))


@model(slow=True)
def while_loop_dynamic():
  """Per-example while_loop whose trip count depends on the data (4, 4 and
  4, 3, 3 iterations here): no reverse mode."""
  p = {"w": _rand(21, (3, 3), 0.4), "v": _rand(22, (3, 2))}

  def one(p, x):
    def cond(c):
      i, h = c
      return (i < 4) & (jnp.sum(h * h) < 6.0)

    def body(c):
      i, h = c
      return i + 1, h + jnp.tanh(h @ p["w"])

    return lax.while_loop(cond, body, (0, x))[1] @ p["v"]

  def f(p, x):
    return jax.vmap(one, (None, 0))(p, x)

  return Model(f, p, _rand(23, (2, 3)), _rand(24, (3, 3)), warns=True)


@model(slow=True)
def fori_loop_dynamic_bounds():
  """fori_loop whose bounds come from the whole batch (a while loop; the
  examples interact, so no vmap_axes)."""
  p = {"w": _rand(25, (3, 3), 0.5), "v": _rand(26, (3, 2))}

  def f(p, x):
    n = jnp.clip(jnp.round(jnp.abs(x[:, 0]).max() * 2), 1, 3).astype(jnp.int32)
    return lax.fori_loop(0, n, lambda i, h: jnp.tanh(h @ p["w"]), x) @ p["v"]

  return Model(f, p, _rand(23, (2, 3)), _rand(24, (3, 3)), vmap_axes=None,
               axes=(TRACE_LAST, FULL), warns=True)


@jax.custom_vjp
def _scaled_tanh(x, s):
  return jnp.tanh(x) * s


def _scaled_tanh_fwd(x, s):
  t = jnp.tanh(x)
  return t * s, (t, s)


def _scaled_tanh_bwd(res, g):
  t, s = res
  return g * s * (1 - t * t), jnp.sum(g * t, axis=tuple(range(g.ndim - s.ndim)))


_scaled_tanh.defvjp(_scaled_tanh_fwd, _scaled_tanh_bwd)


@jax.custom_jvp
def _soft_abs(x):
  return jnp.sqrt(x * x + 0.1)


@_soft_abs.defjvp
def _soft_abs_jvp(primals, tangents):
  (x,), (t,) = primals, tangents
  y = _soft_abs(x)
  return y, t * x / y


@model(slow=True)
def custom_derivatives():
  """custom_jvp (gelu, softplus, silu, logsumexp, own) and a custom_vjp with a
  parameter among its differentiated arguments."""
  p = {"w": _rand(25, (3, 6)), "s": 1 + _rand(26, (6,), 0.1),
       "v": _rand(27, (6, 3))}

  def f(p, x):
    h = x @ p["w"]
    h = jax.nn.gelu(h) + jax.nn.softplus(h) - jax.nn.silu(h) + _soft_abs(h)
    h = _scaled_tanh(h, p["s"])
    y = h @ p["v"]
    return y - jax.nn.logsumexp(y, axis=-1, keepdims=True)

  return Model(f, p, _rand(28, (2, 3)), _rand(29, (3, 3)))


# Weights, embeddings, attention ------------------------------------------------


@model(slow=True)
def tied_weights_twice():
  """One matrix used three times (forward, transposed, squared)."""
  p = {"w": _rand(30, (4, 4), 0.5), "b": _rand(31, (4,))}

  def f(p, x):
    h = jnp.tanh(x @ p["w"] + p["b"])
    h = jnp.tanh(h @ p["w"].T)
    return h @ (p["w"] @ p["w"])[:, :2] + p["b"][:2]

  return Model(f, p, _rand(32, (3, 4)), _rand(33, (2, 4)))


@model(slow=True)
def embedding_masked_attention():
  """int32 tokens, embedding lookup, position table, padding-masked attention."""
  p = {"emb": _rand(34, (6, 4)), "pos": _rand(35, (3, 4), 0.1),
       "qk": _rand(36, (4, 4), 0.5), "out": _rand(37, (4, 2))}

  def f(p, tokens):
    h = jnp.take(p["emb"], tokens, axis=0) + p["pos"]          # (N, T, 4)
    mask = (tokens != 0)[:, None, :]                           # pad token 0
    s = jnp.einsum("ntd,de,nse->nts", h, p["qk"], h)
    a = jax.nn.softmax(jnp.where(mask, s, -1e9), axis=-1)
    return jnp.einsum("nts,nsd->ntd", a, h).sum(1) @ p["out"]

  t1 = jnp.array([[1, 2, 0], [5, 5, 3]], jnp.int32)
  t2 = jnp.array([[4, 0, 0], [2, 3, 1], [1, 1, 5]], jnp.int32)
  return Model(f, p, t1, t2)


@model(slow=True)
def reductions_and_selections():
  """max/min/abs/clip, reduce_max, sort, cumsum, take_along_axis on params."""
  p = {"w": _rand(38, (3, 5)), "b": _rand(39, (5,)), "v": _rand(40, (5, 2))}

  def f(p, x):
    h = x @ p["w"] + p["b"]
    h = jnp.maximum(h, 0.1 * h) + jnp.abs(h) - jnp.clip(h, -0.5, 0.5)
    h = jnp.sort(h, axis=-1) + jnp.cumsum(h, axis=-1) * 0.1
    m = jnp.max(h, axis=-1, keepdims=True)
    idx = jnp.argsort(x[:, :1] * jnp.arange(5.0), axis=-1)
    h = jnp.take_along_axis(h, idx, axis=-1) - m
    return h @ p["v"]

  return Model(f, p, _rand(41, (2, 3)), _rand(42, (3, 3)))


@model
def scalar_and_unused_params():
  """0-d, size-1 and unused parameter leaves, a parameter that is an output."""
  p = {"t": jnp.float32(1.5), "w": _rand(43, (3, 1)), "unused": _rand(44, (2,)),
       "bias": _rand(45, (1, 2)), "none": None}

  def f(p, x):
    return {"y": jnp.tanh(x @ p["w"]) * p["t"] + p["bias"],
            "b": jnp.broadcast_to(p["bias"], (x.shape[0], 2))}

  return Model(f, p, _rand(46, (2, 3)), _rand(47, (3, 3)),
               axes=(TRACE_LAST, FULL, DIAG_BATCH))


@model
def kwargs_key_bool_array():
  """kwargs: a typed key array (shared), a Python bool, a split float array."""
  p = {"w": _rand(48, (3, 4)), "v": _rand(49, (4, 2))}

  def f(p, x, noise_key=None, use_noise=True, shift=0.0):
    h = x @ p["w"] + shift
    if use_noise:
      h = h + 0.1 * jax.random.normal(noise_key, h.shape[1:])
    return jnp.tanh(h) @ p["v"]

  kw = {"noise_key": jax.random.key(3), "use_noise": True,
        "shift": (jnp.float32(0.2), jnp.float32(-0.1))}
  return Model(f, p, _rand(50, (2, 3)), _rand(51, (3, 3)), kwargs=kw,
               axes=(TRACE_LAST, FULL))


# Axes layouts --------------------------------------------------------------------


@model
def batch_last_features_first():
  """x is (features, batch), output (outputs, batch): vmap_axes=1."""
  p = {"w": _rand(52, (4, 3)), "v": _rand(53, (2, 4))}

  def f(p, x):
    return p["v"] @ jnp.tanh(p["w"] @ x)

  return Model(f, p, _rand(54, (3, 2)), _rand(55, (3, 3)), vmap_axes=1,
               axes=(((0,), (), True), FULL, ((), (0,), True),
                     ((0,), (1,), False), ((), (-1,), False)))


@model
def pytree_inputs_pytree_vmap_axes():
  """dict input, leaves batched on different axes; pytree in_axes."""
  p = {"a": _rand(56, (3, 4)), "b": _rand(57, (2, 4)), "o": _rand(58, (4, 2))}

  def f(p, x):  # x["a"]: (N, 3), x["b"]: (2, N), x["c"]: shared (4,)
    h = jnp.tanh(x["a"] @ p["a"] + x["b"].T @ p["b"] + x["c"])
    return h @ p["o"]

  x1 = {"a": _rand(59, (2, 3)), "b": _rand(60, (2, 2)), "c": _rand(61, (4,))}
  x2 = {"a": _rand(62, (3, 3)), "b": _rand(63, (2, 3)), "c": x1["c"]}
  return Model(f, p, x1, x2, vmap_axes=({"a": 0, "b": -1, "c": None}, 0, {}))


@model(slow=True)
def pytree_outputs_per_leaf_axes():
  """Tuple/dict output whose leaves carry the batch on different axes."""
  p = {"w": _rand(64, (3, 4)), "v": _rand(65, (4, 2))}

  def f(p, x):
    h = jnp.tanh(x @ p["w"])                       # (N, 4)
    return (h @ p["v"], {"t": (h * h).T, "s": jnp.sum(h, -1)})

  out_axes = (0, {"t": 1, "s": 0})
  return Model(f, p, _rand(66, (2, 3)), _rand(67, (3, 3)),
               vmap_axes=(0, out_axes, {}),
               axes=(FULL, ((), (0,), False), ((0,), (), False)))


@model
def leading_traced_axis_ensemble():
  """Output (heads, N, O): the leading non-batch axis is traced."""
  p = {"w": _rand(68, (3, 3, 4)), "v": _rand(69, (3, 4, 2))}

  def f(p, x):
    h = jnp.tanh(jnp.einsum("nd,kde->kne", x, p["w"]))
    return jnp.einsum("kne,keo->kno", h, p["v"])

  return Model(f, p, _rand(70, (2, 3)), _rand(71, (3, 3)),
               vmap_axes=(0, 1, {}),
               axes=(((0,), (), True), ((0, -1), (), True), ((-3,), (-1,), True),
                     ((0,), (1,), False), FULL))


@model
def batched_array_kwarg_axis1():
  """A mask kwarg batched on axis 1, split between x1 and x2 (2-tuple)."""
  p = {"w": _rand(72, (3, 4)), "v": _rand(73, (4, 2))}

  def f(p, x, mask):
    return (jnp.tanh(x @ p["w"]) * mask.T) @ p["v"]   # mask: (4, N)

  m1 = (jnp.arange(8.0).reshape(4, 2) % 3 > 0).astype(jnp.float32)
  m2 = (jnp.arange(12.0).reshape(4, 3) % 2).astype(jnp.float32)
  return Model(f, p, _rand(74, (2, 3)), _rand(75, (3, 3)),
               kwargs={"mask": (m1, m2)}, vmap_axes=(0, 0, {"mask": 1}),
               axes=(TRACE_LAST, FULL))


@model(slow=True)
def flax_linen_lifted_transforms():
  """nn.scan over an nn.remat cell, causal self-attention, tied Embed.attend."""
  nn = pytest.importorskip("flax.linen")

  class Cell(nn.Module):
    @nn.compact
    def __call__(self, h, x):
      h = jnp.tanh(nn.Dense(4)(h) + nn.Dense(4, use_bias=False)(x))
      return h, h

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):  # (N, T, 2)
      scan = nn.scan(nn.remat(Cell), variable_broadcast="params",
                     split_rngs={"params": False}, in_axes=1, out_axes=1)
      h, ys = scan()(jnp.zeros((x.shape[0], 4)), x)
      y = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4)(
          ys, mask=nn.make_causal_mask(x[..., 0]))
      return nn.Embed(5, 4).attend(y.mean(1) + h)

  net = Net()
  x1, x2 = _rand(76, (2, 3, 2)), _rand(77, (3, 3, 2))
  return Model(net.apply, net.init(jax.random.PRNGKey(4), x1), x1, x2)


@model(slow=True)
def scan_over_stacked_params():
  """Per-layer weights stacked on a leading axis and scanned over (the params
  are the scan's xs), as flax nn.scan / equinox filter_vmap stacks build."""
  p = {"ws": _rand(78, (3, 4, 4), 0.5), "bs": _rand(79, (3, 4), 0.1),
       "out": _rand(80, (4, 2))}

  def f(p, x):
    def layer(h, wb):
      w, b = wb
      return jnp.tanh(h @ w + b), jnp.sum(h * h, -1)
    h, norms = lax.scan(layer, x, (p["ws"], p["bs"]), unroll=2)
    return h @ p["out"] + 0.1 * norms.mean(0)[:, None]

  return Model(f, p, _rand(81, (2, 4)), _rand(82, (3, 4)))


@model(slow=True)
def indexing_params():
  """dynamic_slice of a parameter at a data-dependent offset, scatter-add and
  scatter-set into activations with parameters as updates."""
  p = {"table": _rand(83, (6, 3)), "w": _rand(84, (3, 4)), "s": _rand(85, (2,))}

  def one(p, x):
    i = jnp.clip(jnp.floor(jnp.abs(x[0]) * 3).astype(jnp.int32), 0, 4)
    rows = lax.dynamic_slice(p["table"], (i, 0), (2, 3))
    h = jnp.tanh(rows.sum(0) * x) @ p["w"]
    h = h.at[1:3].add(p["s"]).at[0].set(p["s"][0] * h[3])
    return jnp.zeros(5).at[jnp.array([0, 2, 2, 4])].add(h)

  def f(p, x):
    return jax.vmap(one, (None, 0))(p, x)

  return Model(f, p, _rand(86, (2, 3)), _rand(87, (3, 3)))


@model(slow=True)
def haiku_remat_attention_conv():
  """hk.remat block, hk.MultiHeadAttention, LayerNorm and Conv1D."""
  hk = pytest.importorskip("haiku")

  def fwd(x):  # (N, T, 3)
    h = hk.remat(lambda h: jax.nn.gelu(hk.Linear(3)(h)))(x)
    h = hk.MultiHeadAttention(
        num_heads=1, key_size=2,
        w_init=hk.initializers.VarianceScaling(1.0))(h, h, h)
    h = hk.LayerNorm(-1, True, True)(h)
    c = hk.Conv1D(2, 2)(h)
    return hk.Linear(2)(c.reshape(c.shape[0], -1))

  t = hk.without_apply_rng(hk.transform(fwd))
  x1, x2 = _rand(88, (2, 3, 3)), _rand(89, (3, 3, 3))
  return Model(t.apply, t.init(jax.random.PRNGKey(5), x1), x1, x2)


@model(slow=True)
def equinox_gru_batchnorm_state():
  """eqx GRUCell scanned over time, BatchNorm with eqx.nn.State (inference)
  and Dropout(inference=True); the whole module, with its non-array fields,
  is the params."""
  eqx = pytest.importorskip("equinox")

  class Net(eqx.Module):
    gru: Any
    bn: Any
    drop: Any
    out: Any

    def __init__(self, key):
      k1, k2 = jax.random.split(key)
      self.gru = eqx.nn.GRUCell(2, 3, key=k1)
      self.bn = eqx.nn.BatchNorm(3, axis_name="batch", inference=True,
                                 mode="ema")
      self.drop = eqx.nn.Dropout(0.5, inference=True)
      self.out = eqx.nn.Linear(3, 2, key=k2)

    def __call__(self, x, state):
      h, _ = lax.scan(lambda h, xt: (self.gru(xt, h), None), jnp.zeros(3), x)
      h, _ = self.bn(h, state)
      return self.out(self.drop(h))

  net, state = eqx.nn.make_with_state(Net)(jax.random.PRNGKey(6))

  def f(m, x):
    return jax.vmap(lambda xi: m(xi, state), axis_name="batch")(x)

  return Model(f, net, _rand(90, (2, 3, 2)), _rand(91, (3, 3, 2)))


@model(slow=True)
def flax_nnx_params_and_rest():
  """nnx.split(model, nnx.Param, ...): only the Params are differentiated,
  BatchNorm statistics are held fixed."""
  nnx = pytest.importorskip("flax.nnx")

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(1, 2, (2, 2), rngs=rngs)
      self.bn = nnx.BatchNorm(2, use_running_average=True, rngs=rngs)
      self.lin = nnx.Linear(2 * 3 * 3, 3, rngs=rngs)

    def __call__(self, x):
      h = nnx.relu(self.bn(self.conv(x)))
      return self.lin(h.reshape(h.shape[0], -1))

  graphdef, params, rest = nnx.split(Net(nnx.Rngs(1)), nnx.Param, ...)

  def f(p, x):
    return nnx.merge(graphdef, p, rest)(x)

  return Model(f, params, _rand(92, (2, 3, 3, 1)), _rand(93, (3, 3, 3, 1)))


@model(slow=True)
def learned_initial_carry_named_checkpoint():
  """A learned initial state as the scan carry, jax.named_call, and a
  checkpoint policy that saves one checkpoint_name'd value."""
  from jax.ad_checkpoint import checkpoint_name
  p = {"h0": _rand(98, (4,)), "w": _rand(99, (4, 4), 0.5),
       "u": _rand(130, (2, 4)), "o": _rand(131, (4, 2))}

  def f(p, x):  # (N, T, 2)
    @functools.partial(
        jax.checkpoint,
        policy=jax.checkpoint_policies.save_only_these_names("hw"))
    @jax.named_call
    def step(h, xt):
      return jnp.tanh(checkpoint_name(h @ p["w"], "hw") + xt @ p["u"]), None

    h0 = jnp.broadcast_to(p["h0"], (x.shape[0], 4))
    h, _ = lax.scan(step, h0, jnp.swapaxes(x, 0, 1))
    return h @ p["o"]

  return Model(f, p, _rand(132, (2, 3, 2)), _rand(133, (3, 3, 2)))


@model(slow=True)
def dot_product_attention_clip():
  """jax.nn.dot_product_attention (causal), clip with parameter bounds, an
  optimization_barrier and a max over a parameter."""
  p = {"q": _rand(134, (4, 4), 0.5), "k": _rand(135, (4, 4), 0.5),
       "v": _rand(136, (4, 4), 0.5), "o": _rand(137, (4, 2)),
       "lo": -jnp.abs(_rand(138, (2,))), "hi": jnp.abs(_rand(139, (2,)))}

  def f(p, x):  # (N, T, 4)
    n, t = x.shape[:2]
    q, k, v = ((x @ p[c]).reshape(n, t, 2, 2) for c in "qkv")
    y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    y = lax.optimization_barrier(y.reshape(n, t, 4).mean(1) @ p["o"])
    return jnp.clip(y, p["lo"], p["hi"]) * jnp.max(p["o"])

  return Model(f, p, _rand(140, (2, 3, 4)), _rand(141, (3, 3, 4)))


@model(slow=True)
def linalg_params():
  """Cholesky, triangular and general solves, slogdet of parameter matrices."""
  p = {"a": _rand(94, (3, 3), 0.3), "w": _rand(95, (3, 3))}

  def f(p, x):
    a = p["a"] @ p["a"].T + jnp.eye(3)
    chol = jnp.linalg.cholesky(a)
    y = jax.scipy.linalg.solve_triangular(chol, (x @ p["w"]).T, lower=True).T
    return y + jnp.linalg.solve(a, x.T).T + jnp.linalg.slogdet(a)[1]

  return Model(f, p, _rand(96, (2, 3)), _rand(97, (3, 3)))


# Reference ---------------------------------------------------------------------


def _jacobians(f, params, x, kwargs):
  """The reference Jacobians, jitted (eagerly some models take seconds)."""
  return jacobians(f, params, x, kwargs, jit=True)


def _reference_of(f, params, x1, x2, trace_axes, diagonal_axes, kwargs=None):
  kwargs = kwargs or {}
  kw1, kw2 = split_kwargs_by_hand(kwargs, x1, x2)
  td = jax.tree.structure(jax.eval_shape(lambda: f(params, x1, **kw1)))
  j1 = _jacobians(f, params, x1, kw1)
  j2 = j1 if x2 is None else _jacobians(f, params, x2, kw2)
  return jax.tree.unflatten(td, [contract(a, b, trace_axes, diagonal_axes)
                                 for a, b in zip(j1, j2)])


@functools.lru_cache(maxsize=None)
def _built(name):
  return MODELS[name]()


@functools.lru_cache(maxsize=None)
def _reference_jacobians(name):
  """J(x1), J(x2) of a model (kwargs split for x2 given; x2=None reuses
  J(x1): x1's side of the kwargs is the same either way)."""
  m = _built(name)
  kw1, kw2 = split_kwargs_by_hand(m.kwargs, m.x1, m.x2)
  return (_jacobians(m.f, m.params, m.x1, kw1),
          _jacobians(m.f, m.params, m.x2, kw2))


def _reference(name, trace_axes, diagonal_axes, use_x2):
  m = _built(name)
  j1, j2 = _reference_jacobians(name)
  j2 = j2 if use_x2 else j1
  td = jax.tree.structure(jax.eval_shape(
      lambda: m.f(m.params, m.x1, **split_kwargs_by_hand(m.kwargs, m.x1,
                                                         None)[0])))
  return jax.tree.unflatten(
      td, [contract(a, b, trace_axes, diagonal_axes) for a, b in zip(j1, j2)])


# The sweep -----------------------------------------------------------------------


def _runs(m: Model, impl: str, everything: bool, k: int = 0):
  """(trace_axes, diagonal_axes, use_x2, vmap_axes) to check.

  The fast sweep takes the model's first three axes options with
  ``vmap_axes``, ``None``, ``vmap_axes``: structured_derivatives (the method
  with the most machinery) checks two of them, jacobian_contraction,
  ntk_vector_products and "auto" one each, rotating with the model's index
  ``k`` so that every option of a model is checked and, across the models,
  every method meets every kind of option.
  """
  vmaps = [None] if m.vmap_axes is None else [m.vmap_axes, None]
  if everything:
    return [(*ax, v) for ax in m.axes for v in vmaps]
  fast = [(*ax, vmaps[i % len(vmaps)]) for i, ax in enumerate(m.axes[:3])]
  shift = {"jacobian_contraction": (0,), "ntk_vector_products": (1,),
           "structured_derivatives": (1, 2), "auto": (2,)}[impl]
  return [fast[i] for i in dict.fromkeys((k + j) % len(fast) for j in shift)]


def _check(name, impl, trace_axes, diagonal_axes, use_x2, vmap_axes):
  m = _built(name)
  ntk = autontk.ntk_fn(m.f, trace_axes=trace_axes,
                       diagonal_axes=diagonal_axes, vmap_axes=vmap_axes,
                       implementation=impl)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", RuntimeWarning)
    got = jax.block_until_ready(
        ntk(m.x1, m.x2 if use_x2 else None, m.params, **m.kwargs))
  warned = [w for w in caught if issubclass(w.category, RuntimeWarning)]
  assert_kernels_close(got, _reference(name, trace_axes, diagonal_axes,
                                       use_x2))
  if not m.warns:
    assert not warned, f"unexpected {warned[0].message}"
  elif impl == "ntk_vector_products":
    # Needs reverse mode: falls back to forward-mode Jacobian contraction
    # and says so. (structured_derivatives takes forward cotangents for the
    # loop itself; auto may pick either.)
    assert warned, "expected a RuntimeWarning (fallback)"


def _check_model(name, impls, everything=False):
  """Every run of every method; reports all failures, not just the first."""
  m = _built(name)
  k = sorted(MODELS).index(name)
  failures = []
  for impl in impls:
    for run in _runs(m, impl, everything, k):
      try:
        _check(name, impl, *run)
      except Exception as e:  # noqa: BLE001 - collected and reported below
        trace_axes, diagonal_axes, use_x2, vmap_axes = run
        failures.append(
            f"{impl} trace_axes={trace_axes} diagonal_axes={diagonal_axes} "
            f"vmap_axes={vmap_axes} x2={'given' if use_x2 else 'None'}: "
            f"{type(e).__name__}: {e}")
  assert not failures, f"{name}:\n" + "\n".join(failures)


# One test per model (not per method): the model and its reference Jacobians
# are built once per test process.
@pytest.mark.parametrize("name", sorted(set(MODELS) - SLOW))
def test_model(name):
  _check_model(name, IMPLS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_every_axes_option(name):
  _check_model(name, IMPLS, everything=True)


def test_auto_under_an_outer_jit():
  m = _built("tied_weights_twice")
  ntk = autontk.ntk_fn(m.f, trace_axes=(), vmap_axes=0)
  got = jax.jit(lambda a, b, p: ntk(a, b, p))(m.x1, m.x2, m.params)
  assert_kernels_close(got, _reference("tied_weights_twice", (), (), True))


def test_numpy_integer_axes():
  m = _built("batch_last_features_first")
  ntk = autontk.ntk_fn(m.f, trace_axes=[np.int64(0)], vmap_axes=np.int32(1),
                       implementation="structured_derivatives")
  assert_kernels_close(ntk(m.x1, m.x2, m.params),
                       _reference("batch_last_features_first", (0,), (), True))


def test_low_precision_params_give_the_kernel_dtype():
  """bfloat16 parameters of a float32 output: every method returns (and
  accumulates in) float32, the kernel dtype."""
  p = {"w": _rand(120, (3, 4)).astype(jnp.bfloat16),
       "v": _rand(121, (4, 2)).astype(jnp.bfloat16)}

  def f(p, x):
    return jnp.tanh(x @ p["w"]) @ p["v"]

  x1, x2 = _rand(122, (2, 3)), _rand(123, (3, 3))
  want = _reference_of(f, p, x1, x2, (), ())
  for impl in IMPLS:
    k = autontk.ntk_fn(f, trace_axes=(), implementation=impl)(x1, x2, p)
    assert k.dtype == jnp.float32, impl
    assert_kernels_close(k, want, rtol=3e-2, atol_frac=3e-2)


# Python constants inside params ------------------------------------------------
#
# An equinox module passed whole as params holds ints, bools, strings and
# functions; f loops and branches on them, so they must reach f as
# themselves, on every path that traces f (jit, eval_shape, the planner, the
# signature, chunked block kernels, ntk_tiled).


def _const_f(p, x):
  h = x
  for _ in range(p["depth"]):
    h = {"tanh": jnp.tanh, "sin": jnp.sin}[p["act"]](h @ p["w"])
  if p["skip"]:
    h = h + x
  return (h * p["scale"]) @ p["v"]


def _const_params(depth=2):
  return {"depth": depth, "act": "tanh", "skip": True, "scale": 0.5,
          "w": _rand(100, (3, 3), 0.5), "v": _rand(101, (3, 2)),
          "ids": jnp.arange(3)}


X1, X2 = _rand(102, (3, 3)), _rand(103, (2, 3))


@pytest.mark.parametrize("impl", IMPLS)
def test_python_constants_in_params(impl):
  ntk = autontk.ntk_fn(_const_f, trace_axes=(), vmap_axes=0,
                       implementation=impl)
  # A new value of a constant is a new program (jacobian_contraction only,
  # to keep this fast: the executable cache is shared by all methods).
  depths = (2, 3) if impl == "jacobian_contraction" else (2,)
  for depth in depths:
    p = _const_params(depth)
    assert_kernels_close(ntk(X1, X2, p),
                         _reference_of(_const_f, p, X1, X2, (), ()))


@pytest.mark.parametrize("scheme", ["scan", "host"])
def test_python_constants_in_params_chunked(scheme):
  p = _const_params()
  ntk = autontk.ntk_fn(_const_f, vmap_axes=0)
  plan = autontk.Plan(autontk.Implementation.STRUCTURED_DERIVATIVES,
                      chunking=autontk.BatchChunking(2, scheme))
  assert_kernels_close(ntk.execute(plan, X1, X2, p),
                       _reference_of(_const_f, p, X1, X2, (-1,), ()))


def test_python_constants_and_kwargs_ntk_tiled_auto_tile():
  def f(p, x, train=True):
    y = _const_f(p, x)
    return y * 2.0 if train else y

  p = _const_params()
  ntk = autontk.ntk_fn(f, vmap_axes=0, implementation="jacobian_contraction")
  got = autontk.ntk_tiled(ntk, X1, X2, p, tile="auto", progress=False,
                          train=False)
  assert_kernels_close(got, _reference_of(f, p, X1, X2, (-1,), (),
                                          {"train": False}))


def test_python_constants_in_params_nngp_and_signature():
  from autontk.plancache.signature import model_signature
  p = _const_params()
  k = autontk.nngp_fn(_const_f)(X1, X2, p)
  np.testing.assert_allclose(k, _const_f(p, X1) @ _const_f(p, X2).T / 2,
                             rtol=1e-5)
  s2, s3 = (model_signature(_const_f, X1, X2, _const_params(d))
            for d in (2, 3))
  assert s2.digest != s3.digest  # the constants are part of the model


# Errors on bad input -------------------------------------------------------------


def _mlp(p, x):
  return jnp.tanh(x @ p["w"]) @ p["v"]


P = {"w": _rand(110, (3, 4)), "v": _rand(111, (4, 2))}
A1, A2 = _rand(112, (2, 3)), _rand(113, (3, 3))


def _scaled(p, x, s):
  return _mlp(p, x) * s[:, None]


def _ctx(p, x, ctx):
  return _mlp(p, x) * ctx["a"][:, None]


def _mixed_ranks(p, x):
  return {"logits": _mlp(p, x), "score": jnp.sum(_mlp(p, x), -1)}


ERRORS = {
    # vmap_axes that do not fit the inputs or outputs
    "vmap-axis-1-on-(N,d)": (
        _mlp, A1, A2, {}, {"vmap_axes": 1}, ValueError,
        r"outside the batch axis \(axis 1, as `vmap_axes` says\)"),
    "vmap-negative-axis-on-(N,d)": (
        _mlp, A1, A2, {}, {"vmap_axes": -1}, ValueError, "`vmap_axes`"),
    "vmap-in-axes-all-None": (
        _mlp, A1, A2, {}, {"vmap_axes": (None, 0, {})}, ValueError,
        "`vmap_axes`"),
    "vmap-in-axes-all-None-x2-None": (
        _mlp, A1, None, {}, {"vmap_axes": (None, 0, {})}, ValueError,
        "batches no input"),
    "vmap-out-axis-not-batch": (
        lambda p, x: _mlp(p, x).T, A1, A2, {}, {"vmap_axes": 0}, ValueError,
        "`vmap_axes` does not fit"),
    "vmap-out-none": (
        _mlp, A1, A2, {}, {"vmap_axes": (0, None, {})}, ValueError,
        "every output leaf needs a batch axis"),
    "vmap-x-tree-mismatch": (
        _mlp, A1, A2, {}, {"vmap_axes": {"a": 0}}, ValueError,
        "`vmap_axes`.*x do not match its pytree structure"),
    "vmap-out-tree-mismatch": (
        _mlp, A1, A2, {}, {"vmap_axes": (0, (0, 0), {})}, ValueError,
        "`vmap_axes`.*output.*pytree structure"),
    "vmap-per-leaf-out-axis-out-of-range": (
        _mixed_ranks, A1, A2, {}, {"vmap_axes": (0, {"logits": 0,
                                                    "score": 1}, {})},
        ValueError, "out of range"),
    "vmap-kwarg-axis-out-of-range": (
        _scaled, A1, A2, {"s": (jnp.ones(2), jnp.ones(3))},
        {"vmap_axes": (0, 0, {"s": 1})}, ValueError, "kwarg `s`"),
    "vmap-kwarg-tree-mismatch": (
        _ctx, A1, A2, {"ctx": ({"a": jnp.ones(2)}, {"a": jnp.ones(3)})},
        {"vmap_axes": (0, 0, {"ctx": {"b": 0}})}, ValueError,
        "kwarg `ctx` do not match its pytree structure"),
    "vmap-batched-kwarg-not-named": (
        _scaled, A1, A2, {"s": (jnp.ones(2), jnp.ones(3))},
        {"vmap_axes": 0}, ValueError, "vmap_axes"),
    "vmap-float": (_mlp, A1, A2, {}, {"vmap_axes": 1.0}, TypeError,
                   "`vmap_axes`"),
    "vmap-bool": (_mlp, A1, A2, {}, {"vmap_axes": True}, TypeError,
                  "`vmap_axes`"),
    "vmap-str": (_mlp, A1, A2, {}, {"vmap_axes": "batch"}, TypeError,
                 "`vmap_axes`"),
    "vmap-single-example-shape": (
        lambda p, x: (jnp.tile(_mlp(p, x), (1, 2)) if x.shape[0] > 1 else
                      _mlp(p, x)),
        A1, A2, {}, {"vmap_axes": 0}, ValueError, "`vmap_axes` does not fit f"),
    "vmap-diagonal-batch-different-sizes": (
        _mlp, A1, A2, {}, {"vmap_axes": 0, "diagonal_axes": (0,)},
        ValueError, "diagonal axis 0"),
    # x1 / x2
    "x-list-vs-tuple": (
        lambda p, x: _mlp(p, x[0]), [A1], (A2,), {}, {}, ValueError,
        "`x1` and `x2` must have the same pytree structure"),
    "x-no-leaves-x2-None": (
        lambda p, x: _mlp(p, A1), {}, None, {}, {}, ValueError,
        "`x1` has no array leaves"),
    "x2-rank": (_mlp, A1, _rand(116, (3, 3, 1)), {}, {}, ValueError,
                "`x2` leaf 0 has rank 3"),
    "x2-feature-size-with-vmap": (
        _mlp, A1, _rand(117, (2, 4)), {}, {"vmap_axes": 0}, ValueError,
        "outside the batch axis"),
    # trace / diagonal axes
    "trace-axes-bool": (_mlp, A1, A2, {}, {"trace_axes": (True,)}, TypeError,
                        "`trace_axes` must be an int"),
    "diagonal-axes-float": (_mlp, A1, A2, {}, {"diagonal_axes": 0.0},
                            TypeError, "`diagonal_axes` must be an int"),
    "trace-axes-out-of-range-for-one-leaf": (
        _mixed_ranks, A1, A2, {}, {"trace_axes": (1,)}, ValueError,
        r"`trace_axes` contains axis 1, out of range for output leaf \d "
        r"\(shape \(2,\)\)"),
    "trace-diagonal-overlap-negative": (
        _mlp, A1, A2, {}, {"trace_axes": (0,), "diagonal_axes": (-2,)},
        ValueError, "overlap"),
    "scalar-output-default-trace": (
        lambda p, x: jnp.sum(_mlp(p, x)), A1, A2, {}, {}, ValueError,
        "`trace_axes` contains axis -1"),
    # kwargs
    "rng-not-a-key": (
        lambda p, x, rng: _mlp(p, x), A1, A2, {"rng": 3}, {}, TypeError,
        "`rng` must be a PRNG key"),
}


@pytest.mark.parametrize("impl", ["jacobian_contraction", "auto"])
@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_input_raises_a_clear_error(case, impl):
  f, x1, x2, kwargs, options, error, match = ERRORS[case]
  with pytest.raises(error, match=match):
    autontk.ntk_fn(f, implementation=impl, **options)(x1, x2, P, **kwargs)
