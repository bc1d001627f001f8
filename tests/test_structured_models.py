"""Structured derivatives on model families, against the reference.

Each model is tiny; every kernel is compared with tests/reference.py at
1e-4 relative (float32). The axes sweep reuses one reference Jacobian.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import autontk
from autontk import _compat
import helpers
import reference
from autontk._options import Implementation
from autontk._plan import Plan
from autontk.methods.structured import StructuredConfig

IMPL = "structured_derivatives"


def _rand(seed, shape, scale=1.0):
  return helpers.rand(seed, shape, scale)


def _close(k, ref, rtol=1e-4):
  for a, b in zip(jax.tree.leaves(k), jax.tree.leaves(ref)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    scale = max(np.max(np.abs(b)), 1e-30)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


def _check(f, params, x1, x2=None, trace_axes=(-1,), diagonal_axes=(),
           vmap_axes=None, config=None, **kwargs):
  fn = autontk.ntk_fn(f, trace_axes=trace_axes, diagonal_axes=diagonal_axes,
                      vmap_axes=vmap_axes, implementation=IMPL)
  if config is None:
    k = fn(x1, x2, params, **kwargs)
  else:
    k = fn.execute(Plan(Implementation.STRUCTURED_DERIVATIVES, config), x1,
                   x2, params, **kwargs)
  ref = reference.reference_ntk(jax.jit(lambda p, x: f(p, x, **kwargs)),
                                params, x1, x2, trace_axes, diagonal_axes)
  _close(k, ref)
  return k


# MLP and the axes sweep ------------------------------------------------------


def mlp(p, x):
  h = jax.scipy.special.erf(x @ p["w1"] + p["b1"])
  h = jnp.tanh(h @ p["w2"])
  return h @ p["w3"] + p["b3"]


MLP_PARAMS = {"w1": _rand(1, (3, 5)), "b1": _rand(2, (5,)),
              "w2": _rand(3, (5, 4)), "w3": _rand(4, (4, 2)),
              "b3": _rand(5, (2,))}
XA = _rand(6, (4, 3))
XB = _rand(7, (3, 3))

AXES = [(t, d) for t, d in itertools.product(
    [(-1,), (), (0,), (0, 1)], [(), (0,), (1,)]) if not set(t) & set(d) and
        not (set(t) & {1, -1} and 1 in d)]


@pytest.fixture(scope="module")
def mlp_jacobians():
  f = jax.jit(mlp)
  return (reference.jacobian_leaves(f, MLP_PARAMS, XA),
          reference.jacobian_leaves(f, MLP_PARAMS, XB))


# Every axes option per-example; the full-batch path on a few of them (the
# rest are marked slow).
FULL_BATCH_FAST = {((-1,), ()), ((), (0,)), ((0,), (1,))}
AXES_CASES = [pytest.param(t, d, 0, id=f"{t}-{d}-vmap0") for t, d in AXES] + [
    pytest.param(t, d, None, id=f"{t}-{d}-full",
                 marks=() if (t, d) in FULL_BATCH_FAST else pytest.mark.slow)
    for t, d in AXES]


@pytest.mark.parametrize("trace_axes,diagonal_axes,vmap_axes", AXES_CASES)
def test_mlp_axes(mlp_jacobians, trace_axes, diagonal_axes, vmap_axes):
  ja, jb = mlp_jacobians
  batch_matched = 0 in trace_axes or 0 in diagonal_axes
  x2, j2 = (None, ja) if batch_matched else (XB, jb)
  fn = autontk.ntk_fn(mlp, trace_axes=trace_axes, diagonal_axes=diagonal_axes,
                      vmap_axes=vmap_axes, implementation=IMPL)
  k = fn(XA, x2, MLP_PARAMS)
  _close(k, reference.contract(ja[0], j2[0], trace_axes, diagonal_axes))


@pytest.mark.parametrize("config", [
    StructuredConfig(structure_rules=False),
    StructuredConfig(structure_rules=False, jacobian_rules=False),
    pytest.param(StructuredConfig(optimize="greedy", precision="highest"),
                 marks=pytest.mark.slow)])
def test_mlp_configs(config):
  _check(mlp, MLP_PARAMS, XA, XB, trace_axes=(), vmap_axes=0, config=config)


def test_same_inputs_reuse_and_implementation_int():
  k = autontk.ntk_fn(mlp, implementation=3)(XA, None, MLP_PARAMS)
  ref = reference.reference_ntk(mlp, MLP_PARAMS, XA, None)
  _close(k, ref)


def test_float64_and_integer_params():
  with _compat.enable_x64(True):
    p = {"w": _rand(8, (3, 4)).astype(jnp.float64),
         "steps": jnp.array(3, jnp.int32)}
    f = lambda p, x: jnp.sin(x.astype(jnp.float64) @ p["w"]) * p["steps"]
    k = _check(f, p, XA, XB, vmap_axes=0)
    assert k.dtype == jnp.float64


# Convolutions -------------------------------------------------------------


def _conv(lhs, rhs, **kw):
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                  ("NHWC", "HWIO", "NHWC"))
  return lax.conv_general_dilated(lhs, rhs, dimension_numbers=dn, **kw)


def cnn(p, x):
  h = jax.nn.relu(_conv(x, p["c1"], window_strides=(1, 1), padding="SAME"))
  h = _conv(h, p["c2"], window_strides=(2, 2), padding="VALID",
            rhs_dilation=(1, 1), feature_group_count=2)
  h = jnp.tanh(h + p["b2"])
  h = _conv(h, p["dw"], window_strides=(1, 1), padding=((1, 0), (0, 1)),
            rhs_dilation=(2, 1), feature_group_count=4)
  h = lax.reduce_window(h, 0., lax.add, (1, 2, 2, 1), (1, 1, 1, 1),
                        "VALID") / 4
  return h.reshape(h.shape[0], -1) @ p["dense"]


CNN_PARAMS = {"c1": _rand(10, (3, 3, 2, 4), 0.5),
              "c2": _rand(11, (2, 2, 2, 4), 0.5), "b2": _rand(12, (4,)),
              "dw": _rand(13, (2, 2, 1, 4), 0.5),
              "dense": _rand(14, (8, 3), 0.5)}
IMG_A = _rand(15, (3, 6, 6, 2))
IMG_B = _rand(16, (2, 6, 6, 2))


@pytest.mark.parametrize("vmap_axes", [
    pytest.param(None, marks=pytest.mark.slow), 0])
def test_cnn_strided_grouped_depthwise(vmap_axes):
  _check(cnn, CNN_PARAMS, IMG_A, IMG_B, trace_axes=(), vmap_axes=vmap_axes)


def test_conv_batch_groups_and_input_param():
  def f(p, x):
    # batch_group_count splits the lhs batch into groups (as in weight
    # gradients); the parameter is also a convolution *input* here.
    lhs = jnp.concatenate([p["img"], p["img"] * 2.0], 0)
    y = _conv(lhs, p["k"], window_strides=(1, 1), padding="SAME",
              batch_group_count=2)
    return x @ y.reshape(-1, 2)[:3]
  p = {"img": _rand(17, (1, 3, 3, 2)), "k": _rand(18, (2, 2, 2, 4))}
  _check(f, p, XA, XB, trace_axes=())


# Normalisation, embeddings, attention -------------------------------------


def test_batchnorm_inference_and_layernorm():
  def f(p, x):
    h = x @ p["w"]
    h = (h - p["stats"]["mean"]) * lax.rsqrt(p["stats"]["var"] + 1e-5)
    h = h * p["gamma"] + p["beta"]
    mu = h.mean(-1, keepdims=True)
    sd = jnp.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    return ((h - mu) / sd * p["ln_scale"]) @ p["out"]
  p = {"w": _rand(20, (3, 4)), "stats": {"mean": _rand(21, (4,)),
                                         "var": jnp.abs(_rand(22, (4,))) + 1},
       "gamma": _rand(23, (4,)), "beta": _rand(24, (4,)),
       "ln_scale": _rand(25, (4,)), "out": _rand(26, (4, 2))}
  _check(f, p, XA, XB, trace_axes=(), vmap_axes=0)


@pytest.mark.parametrize("vmap_axes", [
    pytest.param(None, marks=pytest.mark.slow), 0])
def test_embeddings_tied_weights(vmap_axes):
  def f(p, tokens):
    h = p["emb"][tokens]                         # gather
    h = jnp.tanh(h.mean(-2) @ p["w"])
    return h @ p["emb"].T                       # tied output layer
  p = {"emb": _rand(30, (7, 4)), "w": _rand(31, (4, 4))}
  t1 = jnp.array([[1, 2, 3], [3, 3, 0], [6, 1, 1]])
  t2 = jnp.array([[0, 2, 5], [6, 1, 4]])
  _check(f, p, t1, t2, trace_axes=(), vmap_axes=vmap_axes)


def attention(p, x):
  q, k, v = x @ p["q"], x @ p["k"], x @ p["v"]
  a = jax.nn.softmax(q @ k.swapaxes(-1, -2) / 2.0, axis=-1)
  h = a @ v + x
  mu = h.mean(-1, keepdims=True)
  h = (h - mu) / jnp.sqrt(h.var(-1, keepdims=True) + 1e-5) * p["ln"]
  return jnp.einsum("...td,de->...te", h, p["o"])


ATT_PARAMS = {"q": _rand(40, (3, 3)), "k": _rand(41, (3, 3)),
              "v": _rand(42, (3, 3)), "ln": _rand(43, (3,)),
              "o": _rand(44, (3, 2))}
SEQ_A = _rand(45, (2, 4, 3))
SEQ_B = _rand(46, (3, 4, 3))


@pytest.mark.parametrize("vmap_axes", [
    pytest.param(None, marks=pytest.mark.slow), 0])
def test_attention(vmap_axes):
  _check(attention, ATT_PARAMS, SEQ_A, SEQ_B, trace_axes=(-1,),
         diagonal_axes=(1,), vmap_axes=vmap_axes)


# Control flow, remat, custom derivatives, pytree outputs --------------------


def rnn(p, x):
  def step(h, xt):
    h = jnp.tanh(h @ p["w"] + xt @ p["u"] + p["b"])
    return h, h @ p["o"]
  _, ys = lax.scan(step, jnp.zeros(x.shape[:-2] + (3,)), jnp.moveaxis(x, -2,
                                                                    0))
  return {"last": ys[-1], "all": jnp.moveaxis(ys, 0, -2)}


RNN_PARAMS = {"w": _rand(50, (3, 3), 0.5), "u": _rand(51, (2, 3)),
              "b": _rand(52, (3,)), "o": _rand(53, (3, 2))}


@pytest.mark.slow
@pytest.mark.parametrize("vmap_axes", [None, 0])
def test_scan_rnn_pytree_outputs(vmap_axes):
  x1, x2 = _rand(54, (2, 4, 2)), _rand(55, (3, 4, 2))
  k = _check(rnn, RNN_PARAMS, x1, x2, trace_axes=(), vmap_axes=vmap_axes)
  assert set(k) == {"last", "all"}


@pytest.mark.slow
def test_checkpoint_jit_custom_jvp_vjp_cond():
  @jax.custom_vjp
  def clipped(x):
    return jnp.clip(x, -1, 1)
  clipped.defvjp(lambda x: (clipped(x), x),
                 lambda x, g: (g * (jnp.abs(x) < 1),))

  pred = None

  def f(p, x):
    h = jax.checkpoint(lambda h: jnp.sin(h @ p["w1"]))(x)
    h = jax.jit(lambda h: jax.nn.gelu(h) @ p["w2"])(h)     # custom_jvp inside
    h = clipped(h * p["s"])
    return lax.cond(pred(p, h), lambda h: h @ p["w3"],
                    lambda h: -h @ p["w3"], h)
  p = {"w1": _rand(60, (3, 4)), "w2": _rand(61, (4, 4)),
       "s": _rand(62, (4,)), "w3": _rand(63, (4, 2))}
  # Per-example branches need a per-example predicate under vmap_axes.
  pred = lambda p, h: p["s"].sum() > 0
  _check(f, p, XA, XB, trace_axes=(), vmap_axes=0)
  pred = lambda p, h: h.sum() > 0
  _check(f, p, XA, None, trace_axes=(-1,), vmap_axes=None)


def test_while_loop_forward_mode_cotangents():
  def f(p, x):
    def body(c):
      i, h = c
      return i + 1, jnp.tanh(h @ p)
    return lax.while_loop(lambda c: c[0] < 2, body, (0, x))[1]
  p = _rand(64, (3, 3), 0.5)
  k = autontk.ntk_fn(f, trace_axes=(), implementation=IMPL)(XA, XB, p)
  j1, j2 = (jax.jacfwd(f)(p, x) for x in (XA, XB))
  ref = np.einsum("nokl,mpkl->nmop", j1, j2)
  _close(k, ref)


# Libraries ------------------------------------------------------------------


@pytest.mark.slow
def test_flax_linen():
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Conv(4, (2, 2), strides=(2, 2))(x)
      x = nn.BatchNorm(use_running_average=True)(x)
      x = nn.relu(x).reshape(x.shape[0], -1)
      x = nn.LayerNorm()(nn.Dense(5)(x))
      return nn.Dense(2)(x)

  net = Net()
  variables = net.init(jax.random.PRNGKey(0), IMG_A)
  _check(net.apply, variables, IMG_A, IMG_B, trace_axes=())


@pytest.mark.slow
def test_haiku():
  import haiku as hk

  def fwd(x):
    x = hk.Embed(vocab_size=6, embed_dim=3)(x)
    x = hk.Linear(4)(x.reshape(x.shape[0], -1))
    return hk.Linear(2)(jax.nn.silu(x))

  net = hk.without_apply_rng(hk.transform(fwd))
  t1 = jnp.array([[1, 2], [5, 0], [3, 3]])
  t2 = jnp.array([[4, 2], [0, 0]])
  params = net.init(jax.random.PRNGKey(0), t1)
  _check(net.apply, params, t1, t2, trace_axes=(), vmap_axes=0)


@pytest.mark.slow
def test_equinox():
  import equinox as eqx

  mlp_e = eqx.nn.MLP(3, 2, 4, 2, key=jax.random.PRNGKey(0))
  params, static = eqx.partition(mlp_e, eqx.is_inexact_array)

  def f(p, x):
    return jax.vmap(eqx.combine(p, static))(x)

  _check(f, params, XA, XB, trace_axes=(), vmap_axes=0)


def test_mixed_precision_bfloat16_compute():
  def f(p, x):
    h = jnp.tanh(x.astype(jnp.bfloat16) @ p["w"].astype(jnp.bfloat16))
    return (h @ p["v"].astype(jnp.bfloat16)).astype(jnp.float32)
  p = {"w": _rand(80, (3, 4)), "v": _rand(81, (4, 2))}
  k = autontk.ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=IMPL)(
      XA, XB, p)
  ref = reference.reference_ntk(jax.jit(f), p, XA, XB, ())
  _close(k, ref, rtol=3e-2)  # bfloat16 arithmetic on both sides
