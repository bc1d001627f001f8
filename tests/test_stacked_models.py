"""Structured derivatives on stacked layers, loops, branches and custom VJPs.

Layers whose weights are stacked in one leaf and applied by indexing, by
``lax.scan`` (plain, flax ``nnx.scan`` over ``nnx.vmap``-built layers, flax
linen ``nn.scan``, equinox ``filter_vmap`` layers under ``lax.scan``), by
``fori_loop`` or by a ``while_loop`` with a known trip count; an RNN sharing
its weight over time; branches inside loops; ``custom_vjp`` functions. Every
kernel is compared with the independent reference (tests/reference.py) at
1e-4 relative, with ``strict=True`` (no generic fallback anywhere), and the
structure itself is checked: a stacked leaf used per layer must give
per-layer uses (no Jacobian of the whole stack), and disjoint slices must add
no work.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import autontk
import helpers
import reference
from autontk._options import Implementation
from autontk._plan import Plan
from autontk.methods.structured import StructuredConfig, _side  # noqa: PLC2701
from autontk.methods.structured.rule_table import MissingRuleError

STRICT = StructuredConfig(strict=True)
L, D, W, O = 3, 4, 5, 2


def _rand(seed, shape, scale=0.5):
  return helpers.rand(seed, shape, scale)


P = {"in": _rand(1, (D, W)), "stack": _rand(2, (L, W, W)),
     "b": _rand(3, (L, W), 0.3), "out": _rand(4, (W, O))}
X1, X2 = _rand(5, (3, D), 1.0), _rand(6, (2, D), 1.0)


def _close(k, ref, rtol=1e-4):
  for a, b in zip(jax.tree.leaves(k), jax.tree.leaves(ref)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    np.testing.assert_allclose(a, b, rtol=rtol,
                               atol=rtol * max(np.abs(b).max(), 1e-30))


def _kernel(f, params, x1, x2=None, trace_axes=(), diagonal_axes=(),
            vmap_axes=0, config=STRICT):
  fn = autontk.ntk_fn(f, trace_axes=trace_axes, diagonal_axes=diagonal_axes,
                      vmap_axes=vmap_axes)
  plan = Plan(Implementation.STRUCTURED_DERIVATIVES, config)
  return fn.execute(plan, x1, x2, params)


def _check(f, params=P, x1=X1, x2=X2, trace_axes=(), vmap_axes=0,
           config=STRICT):
  k = _kernel(f, params, x1, x2, trace_axes, (), vmap_axes, config)
  _close(k, reference.reference_ntk(jax.jit(f), params, x1, x2, trace_axes))


def _uses(f, params=P, x=X1, vmap_axes=0, config=STRICT):
  """The static description of f's uses, traced as in a real call."""
  specs = []

  def trace(x, p):
    problem = autontk.ntk_fn(f, vmap_axes=vmap_axes).problem(x, None, p)
    specs.append(_side(problem, 1, config)[0])

  jax.eval_shape(trace, x, params)
  return specs[0].uses


def _head(p, x):
  return jnp.tanh(x @ p["in"])


# Idioms -----------------------------------------------------------------------


def indexed(p, x):
  h = _head(p, x)
  for i in (0, -1, 1):  # a negative index too
    h = jnp.tanh(h @ p["stack"][i] + p["b"][i])
  h = h + jnp.tanh(h @ p["stack"][::2][1])  # a strided slice: layer 2 again
  return h @ p["out"]


def indexed_known_dynamic(p, x):
  h = _head(p, x)
  h = jnp.tanh(h @ lax.dynamic_index_in_dim(p["stack"], 1, keepdims=False))
  h = jnp.tanh(h @ p["stack"][jnp.int32(2)])
  h = jnp.tanh(h @ p["stack"][jnp.array([0, 2])].sum(0))  # a constant gather
  return h @ p["out"]


def scanned(p, x, reverse=False, unroll=1):
  def layer(h, wb):
    return jnp.tanh(h @ wb[0] + wb[1]), None
  h, _ = lax.scan(layer, _head(p, x), (p["stack"], p["b"]), reverse=reverse,
                  unroll=unroll)
  return h @ p["out"]


def scanned_state(p, x):
  """Two stacked leaves, two carries, stacked outputs used afterwards."""
  def layer(c, wb):
    h, s = c
    h = jnp.tanh(h @ wb[0]) + wb[1]
    return (h, s + h), h
  h = _head(p, x)
  (h, s), hs = lax.scan(layer, (h, jnp.zeros_like(h)), (p["stack"], p["b"]))
  return (h + s + hs.mean(0)) @ p["out"]


def fori(p, x):
  def layer(i, h):
    return jnp.tanh(h @ p["stack"][i] + p["b"][L - 1 - i])
  return lax.fori_loop(0, L, layer, _head(p, x)) @ p["out"]


def while_known(p, x):
  def body(c):
    i, h = c
    return i + 1, jnp.tanh(h @ p["stack"][i])
  return lax.while_loop(lambda c: c[0] < L, body, (0, _head(p, x)))[1] @ p[
      "out"]


def rnn(p, x):
  """One weight shared over time (a loop constant) and a stacked input."""
  def step(h, xt):
    h = jnp.tanh(h @ p["stack"][0] + xt @ p["in"])
    return h, h
  xs = jnp.stack([x, 2 * x, -x, x ** 2])
  h, hs = lax.scan(step, jnp.zeros(x.shape[:-1] + (W,)), xs)
  return (h + hs.sum(0)) @ p["out"]


IDIOMS = {
    "indexed": indexed,
    "indexed_known_dynamic": indexed_known_dynamic,
    "scan": scanned,
    "scan_reverse_unroll2": functools.partial(scanned, reverse=True,
                                              unroll=2),
    "scan_state": scanned_state,
    "fori": fori,
    "while_known": while_known,
    "rnn": rnn,
}


@pytest.mark.compat
@pytest.mark.parametrize("name", sorted(IDIOMS))
def test_idiom_strict_matches_reference(name):
  _check(IDIOMS[name])


ROLLED = StructuredConfig(strict=True, unroll_loops_up_to=0)


@pytest.mark.parametrize("name", [
    "scan_reverse_unroll2", "rnn",
    pytest.param("scan_state", marks=pytest.mark.slow),
    pytest.param("fori", marks=pytest.mark.slow),
    pytest.param("while_known", marks=pytest.mark.slow)])
def test_idiom_with_loops_kept_rolled(name):
  # Short loops are unrolled when the cotangents are computed, by default;
  # this is the path of long ones.
  _check(IDIOMS[name], config=ROLLED)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(IDIOMS))
def test_idiom_full_batch_and_same_inputs(name):
  _check(IDIOMS[name], x2=None, vmap_axes=None, trace_axes=(-1,))


AXES = [(t, d) for t, d in itertools.product(
    [(-1,), (), (0,), (0, 1)], [(), (0,), (1,)]) if not set(t) & set(d) and
        not (set(t) & {1, -1} and 1 in d)]
FAST_AXES = {((), ()), ((-1,), (0,)), ((0,), (1,))}


@pytest.fixture(scope="module")
def scan_jacobians():
  f = jax.jit(scanned)
  return (reference.jacobians(f, P, X1, {}), reference.jacobians(f, P, X2, {}))


@pytest.mark.parametrize("trace_axes,diagonal_axes,vmap_axes", [
    pytest.param(t, d, v, id=f"{t}-{d}-{v}",
                 marks=() if (t, d) in FAST_AXES and v == 0 else
                 pytest.mark.slow)
    for t, d in AXES for v in (0, None)])
def test_scan_every_axes_option(scan_jacobians, trace_axes, diagonal_axes,
                                vmap_axes):
  ja, jb = scan_jacobians
  same = 0 in trace_axes or 0 in diagonal_axes
  k = _kernel(scanned, P, X1, None if same else X2, trace_axes,
              diagonal_axes, vmap_axes)
  _close(k, reference.contract(ja[0], (ja if same else jb)[0], trace_axes,
                               diagonal_axes))


# The structure is kept ------------------------------------------------------


def _separate(p, x):
  h = _head(p, x)
  for i in range(L):
    h = jnp.tanh(h @ p[f"w{i}"])
  return h @ p["out"]


def _indexed_plain(p, x):
  h = _head(p, x)
  for i in range(L):
    h = jnp.tanh(h @ p["stack"][i])
  return h @ p["out"]


def _scan_plain(p, x):
  h, _ = lax.scan(lambda h, w: (jnp.tanh(h @ w), None), _head(p, x),
                  p["stack"])
  return h @ p["out"]


def test_stacked_leaf_gives_per_layer_uses():
  stack = sorted(P).index("stack")  # dict leaves come in key order
  idx = [u for u in _uses(_indexed_plain) if u.param == stack]
  assert sorted(u.primitive for u in idx) == ["dot_general"] * L
  assert len({u.region for u in idx}) == L  # one row of the stack each
  (scan_use,) = [u for u in _uses(_scan_plain) if u.param == stack]
  assert scan_use.primitive == "dot_general"
  # The iteration is θ's leading label, shared with the cotangent and the
  # factor: different layers never meet in a pair product.
  loop = scan_use.theta_labels[0]
  assert scan_use.cot_labels[0] == loop
  assert all(f.labels[0] == loop for f in scan_use.factors)


def _flops(f, params, x):
  fn = autontk.ntk_fn(f, trace_axes=(), vmap_axes=0,
                      implementation="structured_derivatives")
  compiled = jax.jit(lambda p, x: fn(x, None, p)).lower(params, x).compile()
  return compiled.cost_analysis()["flops"]


def test_disjoint_slices_cost_what_separate_leaves_cost():
  w = 32
  p = {"in": _rand(10, (D, w)), "stack": _rand(11, (L, w, w), w ** -0.5),
       "out": _rand(12, (w, O))}
  sep = dict(p, **{f"w{i}": p["stack"][i] for i in range(L)})
  del sep["stack"]
  x = _rand(13, (4, D), 1.0)
  assert _flops(_indexed_plain, p, x) <= 1.1 * _flops(_separate, sep, x)


def test_overlapping_slices_and_identity_outputs():
  def f(p, x):
    h = _head(p, x)
    a, b = p["stack"][0:2].sum(0), p["stack"][1:3].sum(0)
    h = jnp.tanh(h @ a) @ b
    # A slice that *is* part of the output, overlapping another use.
    return h[:, :O] @ jnp.ones((O, O)) + p["stack"][1, 0, :O] + p["stack"][
        :2, 0, :O].sum(0)
  _check(f)
  _check(f, x2=None, vmap_axes=None)


def test_transposed_and_reversed_views():
  def f(p, x):
    h = _head(p, x)
    h = jnp.tanh(h @ p["stack"][0].T + h @ jnp.flip(p["stack"], (0, 1))[2])
    return h @ p["stack"][1, :, :O]
  _check(f)
  assert {u.primitive for u in _uses(f)} <= {"dot_general"}


# Branches and nesting ---------------------------------------------------------


def test_cond_inside_scan_and_known_switch():
  def f(p, x):
    def layer(h, w):
      h = lax.cond(h.sum() > 0, lambda h: jnp.tanh(h @ w),
                   lambda h: jnp.sin(h @ w.T), h)
      return h, None
    h, _ = lax.scan(layer, _head(p, x), p["stack"])
    h = lax.switch(1, [lambda h: h @ p["out"], lambda h: -h @ p["out"]], h)
    return h
  _check(f, vmap_axes=None)  # the branch depends on the whole batch


@pytest.mark.slow
def test_nested_scans_over_a_two_level_stack():
  p = dict(P, stack=_rand(20, (2, 2, W, W)))

  def f(p, x):
    def outer(h, ws):
      h, _ = lax.scan(lambda h, w: (jnp.tanh(h @ w), None), h, ws)
      return h, None
    h, _ = lax.scan(outer, _head(p, x), p["stack"])
    return h @ p["out"]
  _check(f, params=p)


def test_parameter_as_initial_carry():
  def f(p, x):
    h0 = _head(p, x) + p["b"][0]
    h, _ = lax.scan(lambda h, w: (jnp.tanh(h @ w) + h, None), h0,
                    p["stack"])
    return h @ p["out"]
  _check(f)


# Libraries --------------------------------------------------------------------


def test_flax_nnx_vmap_and_scan():
  nnx = pytest.importorskip("flax.nnx")

  class Block(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(W, W, rngs=rngs)
      self.norm = nnx.LayerNorm(W, rngs=rngs)

    def __call__(self, x):
      return nnx.tanh(self.norm(self.linear(x)))

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.inp = nnx.Linear(D, W, rngs=rngs)

      @nnx.split_rngs(splits=L)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def make(rngs):
        return Block(rngs)

      self.blocks = make(rngs)
      self.out = nnx.Linear(W, O, rngs=rngs)

    def __call__(self, x):
      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
      def forward(x, block):
        return block(x)
      return self.out(forward(self.inp(x), self.blocks))

  graphdef, state = nnx.split(Net(nnx.Rngs(0)))
  _check(lambda s, x: nnx.merge(graphdef, s)(x), params=state)


def test_equinox_filter_vmap_layers_under_scan():
  eqx = pytest.importorskip("equinox")
  keys = jax.random.split(jax.random.PRNGKey(3), L)
  layers = eqx.filter_vmap(lambda k: eqx.nn.Linear(W, W, key=k))(keys)
  net = (eqx.nn.Linear(D, W, key=jax.random.PRNGKey(4)), layers,
         eqx.nn.Linear(W, O, key=jax.random.PRNGKey(5)))
  params, static = eqx.partition(net, eqx.is_array)

  def f(p, x):
    inp, layers, out = eqx.combine(p, static)
    dynamic, static_layer = eqx.partition(layers, eqx.is_array)

    def layer(h, d):
      return jnp.tanh(eqx.combine(d, static_layer)(h)), None

    def one(x):
      h, _ = lax.scan(layer, jnp.tanh(inp(x)), dynamic)
      return out(h)
    return jax.vmap(one)(x)

  _check(f, params=params)


@pytest.mark.slow
def test_flax_linen_nn_scan():
  nn = pytest.importorskip("flax.linen")

  class Block(nn.Module):
    @nn.compact
    def __call__(self, h, _):
      return jnp.tanh(nn.Dense(W)(h)), None

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.Dense(W)(x)
      h, _ = nn.scan(Block, variable_axes={"params": 0},
                     split_rngs={"params": True}, length=L)()(h, None)
      return nn.Dense(O)(h)

  net = Net()
  _check(net.apply, params=net.init(jax.random.PRNGKey(0), X1))


def _layer_norm(x, s):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) * lax.rsqrt(((x - mu) ** 2).mean(-1, keepdims=True) +
                              1e-5) * s


def transformer(p, x):
  """Pre-LN blocks with one head, stacked and scanned; x: (N, T, D)."""
  def block(h, b):
    a = _layer_norm(h, b["ln"])
    att = jax.nn.softmax(jnp.einsum("...td,...sd->...ts", a @ b["q"],
                                    a @ b["k"]) / 2.0, axis=-1)
    h = h + jnp.einsum("...ts,...sd->...td", att, a @ b["v"]) @ b["o"]
    return h + jax.nn.gelu(h @ b["w1"]) @ b["w2"], None
  h, _ = lax.scan(block, x @ p["emb"], p["blocks"])
  return h.mean(-2) @ p["head"]


TRANSFORMER = {
    "emb": _rand(30, (D, W)), "head": _rand(31, (W, O)),
    "blocks": {"q": _rand(32, (2, W, W)), "k": _rand(33, (2, W, W)),
               "v": _rand(34, (2, W, W)), "o": _rand(35, (2, W, W)),
               "ln": 1 + _rand(36, (2, W), 0.1),
               "w1": _rand(37, (2, W, 3)), "w2": _rand(38, (2, 3, W))}}


@pytest.mark.slow
@pytest.mark.parametrize("vmap_axes", [0, None])
def test_transformer_with_scanned_blocks(vmap_axes):
  s1, s2 = _rand(39, (2, 3, D), 1.0), _rand(40, (3, 3, D), 1.0)
  _check(transformer, TRANSFORMER, s1, s2, trace_axes=(-1,),
         vmap_axes=vmap_axes)


# Custom derivatives and the switches -------------------------------------------


@jax.custom_vjp
def _unit_columns(w):
  return w / jnp.sqrt((w ** 2).sum(0, keepdims=True) + 1e-6)


def _unit_columns_fwd(w):
  return _unit_columns(w), w


def _unit_columns_bwd(w, g):
  # A numerically careful rewrite of the primal's own derivative.
  n2 = (w ** 2).sum(0, keepdims=True) + 1e-6
  return ((g - w * (g * w).sum(0, keepdims=True) / n2) / jnp.sqrt(n2),)


_unit_columns.defvjp(_unit_columns_fwd, _unit_columns_bwd)


def weight_normed(p, x):
  h, _ = lax.scan(lambda h, w: (jnp.tanh(h @ _unit_columns(w)), None),
                  _head(p, x), p["stack"])
  return h @ p["out"]


@pytest.mark.compat
def test_custom_vjp_on_a_parameter():
  # The custom rule, honoured: exact through the generic path (strict says
  # so); the primal's structure, when the rule is a rewrite: exact too.
  with pytest.raises(MissingRuleError, match="custom_lin"):
    _kernel(weight_normed, P, X1, X2)
  _check(weight_normed, config=StructuredConfig())
  _check(weight_normed, config=StructuredConfig(strict=True,
                                                custom_vjp="primal"))
  with pytest.raises(ValueError, match="custom_vjp"):
    StructuredConfig(custom_vjp="maybe")


@pytest.mark.parametrize("config", [
    StructuredConfig(views=False, loops=False),
    StructuredConfig(structure_rules=False, jacobian_rules=False)])
def test_structure_off_is_exact(config):
  _check(scanned_state, config=config)
  _check(indexed, config=config)


# The benchmark's models -------------------------------------------------------


@pytest.mark.slow
def test_bench_stacked_variants_agree():
  """bench/stacked.py: every way of holding the stack is the same network."""
  import os
  import sys
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))
  from bench import stacked
  from bench.zoo import stacked as zoo
  for build in zoo.MODELS.values():
    model = build(True)
    x = model["x"][:2]
    outs = [jax.jit(f)(zoo.params_of(v, model["rest"], model["stack"]), x)
            for v, f in model["fns"].items()]
    for o in outs[1:]:
      np.testing.assert_allclose(o, outs[0], rtol=1e-5, atol=1e-5)
  rec = {"variant": "scan", "method": "structured_derivatives",
         "median_s": 0.002, "rel_err": 1e-7}
  md = stacked.markdown({"cases": [{"name": "mlp", "note": "n",
                                    "records": [rec]}]})
  assert "| scan |" in md
