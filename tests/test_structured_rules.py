"""Sweeps the structured-derivatives rule table.

Every registered primitive has a tiny case below that feeds a parameter
straight into it. Each case is checked three ways: the rules (with
``strict=True``, so the primitive must be handled by its rule, and the
rule must really be the one used), the generic path (all rules off), and the
independent reference. A primitive whose view rule applies (a slice, an
index known at trace time) is no use at all: the layer consuming the view
is; those cases are checked once more with views off, through the
primitive's own structure or Jacobian rule.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import autontk
from autontk import _compat
from autontk._options import Implementation
from autontk._plan import Plan
from autontk.methods.structured import StructuredConfig, rule_table
from autontk.methods.structured import _side  # noqa: PLC2701
from reference import reference_ntk
import helpers

P = jax.extend.core.primitives
RULES = StructuredConfig(strict=True)
RULES_NO_VIEWS = StructuredConfig(strict=True, views=False)
GENERIC = StructuredConfig(structure_rules=False, jacobian_rules=False)
NO_STRUCTURE = StructuredConfig(structure_rules=False)


def _rand(seed, shape, scale=1.0):
  return helpers.rand(seed, shape, scale)


N = 3
X = _rand(0, (N, 3))
X2 = _rand(1, (2, 3))
IMG = _rand(2, (N, 5, 6, 2))
IMG2 = _rand(3, (2, 5, 6, 2))


def _conv(lhs, rhs, **kw):
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                  ("NHWC", "HWIO", "NHWC"))
  return lax.conv_general_dilated(lhs, rhs, dimension_numbers=dn, **kw)


# name -> (primitive, f(p, x), params, x1, x2, vmap_axes)
CASES = {
    "dot_general_rhs": (P.dot_general_p, lambda p, x: jnp.tanh(x) @ p,
                        _rand(5, (3, 4)), X, X2, 0),
    "dot_general_lhs": (P.dot_general_p, lambda p, x: (p @ x.T).T,
                        _rand(5, (4, 3)), X, X2, None),
    "dot_general_batch": (
        P.dot_general_p,
        lambda p, x: lax.dot_general(
            jnp.stack([x, x ** 2], 1), p, (((2,), (1,)), ((1,), (0,)))),
        _rand(6, (2, 3, 4)), X, X2, None),
    "conv_kernel_same_strided": (
        P.conv_general_dilated_p,
        lambda p, x: _conv(x, p, window_strides=(2, 1), padding="SAME"),
        _rand(7, (3, 2, 2, 3)), IMG, IMG2, 0),
    "conv_kernel_valid_dilated": (
        P.conv_general_dilated_p,
        lambda p, x: _conv(x, p, window_strides=(1, 1),
                           padding=((0, 0), (0, 0)),
                           lhs_dilation=(2, 1), rhs_dilation=(1, 2)),
        _rand(8, (2, 2, 2, 3)), IMG, IMG2, None),
    "conv_input": (
        P.conv_general_dilated_p,
        lambda p, x: x @ _conv(p, _rand(9, (2, 2, 2, 3)), window_strides=(1, 1),
                               padding="SAME").reshape(3, -1),
        _rand(10, (1, 3, 3, 2)), X, X2, None),
    "add": (P.add_p, lambda p, x: p["a"] * x + p["b"],
            {"a": _rand(11, (N, 3)), "b": _rand(12, (N, 3))}, X, None, None),
    "sub": (P.sub_p, lambda p, x: p["a"] * x - p["b"],
            {"a": _rand(11, (N, 3)), "b": _rand(12, (N, 3))}, X, None, None),
    "neg": (P.neg_p, lambda p, x: -p * x, _rand(13, (N, 3)), X, None, None),
    "mul": (P.mul_p, lambda p, x: (p * x) * 2.0, _rand(14, (N, 3)), X, None,
            None),
    # θ broadcast along a size-1 axis inside the primitive itself
    "mul_broadcast": (P.mul_p, lambda p, x: jnp.tanh(x) * p, _rand(14, (3,)),
                      X, X2, None),
    "sub_broadcast": (P.sub_p, lambda p, x: x * p["a"] - p["b"],
                      {"a": _rand(11, (3,)), "b": _rand(12, (3,))}, X, X2,
                      None),
    "div": (P.div_p, lambda p, x: p / (1 + x ** 2), _rand(15, (N, 3)), X,
            None, None),
    "copy": (P.copy_p, lambda p, x: jnp.array(p, copy=True) * x,
             _rand(16, (N, 3)), X, None, None),
    "select_n": (P.select_n_p, lambda p, x: jnp.where(x > 0, p, x),
                 _rand(17, (N, 3)), X, None, None),
    "broadcast_in_dim": (P.broadcast_in_dim_p, lambda p, x: jnp.sin(x) + p,
                         _rand(18, (3,)), X, X2, None),
    "expand_dims": (P.broadcast_in_dim_p,
                    lambda p, x: x[:, :, None] * jnp.expand_dims(p, 0),
                    _rand(19, (3, 2)), X, X2, 0),
    "reshape": (P.reshape_p, lambda p, x: x @ p.reshape(3, 4),
                _rand(20, (12,)), X, X2, 0),
    "transpose": (P.transpose_p, lambda p, x: x @ p.T, _rand(21, (4, 3)), X,
                  X2, 0),
    "squeeze": (P.squeeze_p, lambda p, x: x @ jnp.squeeze(p, 0),
                _rand(22, (1, 3, 4)), X, X2, 0),
    "rev": (P.rev_p, lambda p, x: x @ jnp.flip(p, 0), _rand(23, (3, 4)), X,
            X2, 0),
    # lax.slice, not p[1:7:2]: jax 0.6 indexes with a stride through gather.
    "slice": (P.slice_p,
              lambda p, x: x @ lax.slice(p, (1, 0), (7, 4), (2, 1)),
              _rand(24, (7, 4)), X, X2, 0),
    "pad": (P.pad_p, lambda p, x: x @ lax.pad(p, 0., [(1, 0, 0), (0, 1, 1)]),
            _rand(25, (2, 2)), X, X2, 0),
    "concatenate": (P.concatenate_p,
                    lambda p, x: x @ jnp.concatenate([p, 2 * p[:1]], 0),
                    _rand(26, (2, 4)), X, X2, 0),
    "dynamic_slice": (P.dynamic_slice_p,
                      lambda p, x: x @ lax.dynamic_slice(p, (1, 0), (3, 4)),
                      _rand(27, (5, 4)), X, X2, 0),
    "dynamic_slice_traced": (
        P.dynamic_slice_p,
        lambda p, x: x @ lax.dynamic_slice(
            p, (jnp.argmax(x.sum(0)).astype(jnp.int32), 0), (3, 4)),
        _rand(27, (5, 4)), X, X2, None),
    "gather_known_rows": (P.gather_p,
                          lambda p, x: x @ p[jnp.array([3, 0, 1])],
                          _rand(28, (5, 4)), X, X2, 0),
    "gather_take": (P.gather_p,
                    lambda p, x: jnp.take(p, jnp.abs(x * 3).astype(jnp.int32),
                                          axis=0).sum(1),
                    _rand(28, (9, 4)), X, X2, 0),
    "gather_index": (P.gather_p,
                     lambda p, x: p[jnp.argmax(x, -1)] * x[:, :1],
                     _rand(29, (3, 4)), X, X2, None),
    "reduce_sum": (P.reduce_sum_p, lambda p, x: x * p.sum(0),
                   _rand(30, (5, 3)), X, X2, 0),
    "cumsum": (P.cumsum_p, lambda p, x: x * jnp.cumsum(p),
               _rand(31, (3,)), X, X2, 0),
    "reduce_window_sum": (
        P.reduce_window_sum_p,
        lambda p, x: x @ lax.reduce_window(p, 0., lax.add, (2, 1), (1, 1),
                                           "VALID"),
        _rand(32, (4, 3)), X, X2, 0),
}

# Cases whose primitive is a view of the parameter (see the module docstring).
VIEWS = {"squeeze", "transpose", "rev", "slice", "dynamic_slice",
         "gather_known_rows", "expand_dims"}

# Registered primitives that a parameter cannot feed directly in a plain
# function, with the reason; each is still covered through its twin.
NO_DIRECT_CASE = {
    P.add_jaxvals_p: "sums tangents inside linearised code only (as add)",
    P.convert_element_type_p: "a cast parameter passes through as itself; "
                              "see test_convert_element_type_float64",
}


def _kernel(case, config, trace_axes=(-1,), diagonal_axes=(), same=False):
  _, f, p, x1, x2, vmap_axes = case
  fn = autontk.ntk_fn(f, trace_axes=trace_axes, diagonal_axes=diagonal_axes,
                      vmap_axes=vmap_axes)
  plan = Plan(Implementation.STRUCTURED_DERIVATIVES, config)
  return fn.execute(plan, x1, None if same else x2, p)


def _run(case, config, trace_axes=(-1,), diagonal_axes=(), same=False):
  _, f, p, x1, x2, _ = case
  x2 = None if same else x2
  # The reference differentiates a jitted f: the same math, compiled once
  # rather than dispatched op by op.
  return (_kernel(case, config, trace_axes, diagonal_axes, same),
          reference_ntk(jax.jit(f), p, x1, x2, trace_axes, diagonal_axes))


def _used_primitives(case, config) -> set[str]:
  _, f, p, x1, _, vmap_axes = case
  specs = []

  def trace(x, p):  # traced, as in a real call: x is not known
    problem = autontk.ntk_fn(f, vmap_axes=vmap_axes).problem(x, None, p)
    specs.append(_side(problem, 1, config)[0])

  jax.eval_shape(trace, x1, p)
  return {n for u in specs[0].uses for n in u.primitive.split("+")}


def test_every_rule_has_a_case():
  covered = {case[0] for case in CASES.values()} | set(NO_DIRECT_CASE)
  missing = [str(p) for p in rule_table.registered() if p not in covered]
  assert not missing, f"rules without a test case: {missing}"


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=[pytest.mark.slow] if n == "conv_input" else [])
    for n in sorted(CASES)])
def test_rule_matches_generic_and_reference(name):
  case = CASES[name]
  k_rules, ref = _run(case, RULES)
  scale = np.max(np.abs(ref))
  np.testing.assert_allclose(k_rules, ref, atol=1e-5 * scale, rtol=1e-4)
  k_generic = _kernel(case, GENERIC)
  np.testing.assert_allclose(k_generic, ref, atol=1e-5 * scale, rtol=1e-4)
  record = rule_table.registered()[case[0]]
  if record.jacobian is not None and (record.structure is not None or
                                      record.view is not None):
    # Only here does "structure rules off" take a third path.
    k_jac = _kernel(case, NO_STRUCTURE)
    np.testing.assert_allclose(k_jac, ref, atol=1e-5 * scale, rtol=1e-4)
  used = _used_primitives(case, RULES)
  if name in VIEWS:
    assert str(case[0]) not in used, used
    k_own = _kernel(case, RULES_NO_VIEWS)
    np.testing.assert_allclose(k_own, ref, atol=1e-5 * scale, rtol=1e-4)
    used = _used_primitives(case, RULES_NO_VIEWS)
  if name != "conv_input":  # its rule is a Jacobian rule
    assert str(case[0]) in used, used


@pytest.mark.parametrize("name", [
    "dot_general_rhs",
    pytest.param("gather_take", marks=pytest.mark.slow),
    pytest.param("conv_kernel_same_strided", marks=pytest.mark.slow),
    pytest.param("broadcast_in_dim", marks=pytest.mark.slow)])
@pytest.mark.parametrize("trace_axes,diagonal_axes",
                         [((), ()), ((0,), ()), ((), (0,)), ((-1,), (0,)),
                          ((0, -1), ())])
def test_structured_rules_under_axes(name, trace_axes, diagonal_axes):
  case = CASES[name]
  same = bool(set(trace_axes) & {0}) or 0 in diagonal_axes
  k, ref = _run(case, RULES, trace_axes, diagonal_axes, same=same)
  np.testing.assert_allclose(k, ref, atol=1e-5 * np.max(np.abs(ref)),
                             rtol=1e-4)


def test_convert_element_type_float64():
  with _compat.enable_x64(True):
    p = _rand(40, (3, 4)).astype(jnp.float64)
    x = _rand(41, (2, 3))
    f = lambda p, x: x @ p.astype(jnp.float32)
    case = (P.convert_element_type_p, f, p, x, None, 0)
    k, ref = _run(case, RULES)
    # A cast parameter is the parameter: the matmul keeps its structure.
    assert _used_primitives(case, RULES) == {"dot_general"}
  np.testing.assert_allclose(k, ref, rtol=1e-4, atol=1e-6)


@jax.custom_vjp
def _scaled_sin(p):
  return jnp.sin(p)


_scaled_sin.defvjp(lambda p: (jnp.sin(p), jnp.cos(p)),
                   lambda cos_p, g: (g * cos_p,))

# A custom VJP applied to a parameter appears as ``custom_lin`` after
# linearisation: no rule, so the exact generic fallback.
CUSTOM_VJP_CASE = (None, lambda p, x: x @ _scaled_sin(p), _rand(43, (3, 4)),
                   X, X2, 0)


def test_strict_names_the_primitive():
  with pytest.raises(rule_table.MissingRuleError, match="custom_lin"):
    _run(CUSTOM_VJP_CASE, RULES)


def test_unknown_primitive_falls_back_exactly(caplog):
  rule_table._LOGGED.discard(P.custom_lin_p)  # noqa: SLF001 - logged once
  jax.clear_caches()  # another test may have traced this model already
  # The handler goes on the logger itself, and the logger is enabled: a
  # logging configuration run by another test's library may have disabled
  # existing loggers or stopped propagation to the root caplog listens on.
  rule_table.log.addHandler(caplog.handler)
  rule_table.log.disabled = False
  try:
    with caplog.at_level("INFO", logger="autontk.structured"):
      k, ref = _run(CUSTOM_VJP_CASE, StructuredConfig())
  finally:
    rule_table.log.removeHandler(caplog.handler)
  np.testing.assert_allclose(k, ref, rtol=1e-4, atol=1e-6)
  assert "custom_lin" in caplog.text and "generic fallback" in caplog.text


@pytest.mark.parametrize("groups,kernel_shape", [(2, (2, 2, 2, 6)),
                                                 (4, (2, 1, 1, 8))])
def test_grouped_and_depthwise_conv_rule(groups, kernel_shape):
  img = _rand(50, (2, 4, 5, 4))
  f = lambda p, x: _conv(x, p, window_strides=(1, 2), padding="SAME",
                         rhs_dilation=(2, 1), feature_group_count=groups)
  case = (P.conv_general_dilated_p, f, _rand(51, kernel_shape), img, None, 0)
  k, ref = _run(case, RULES, trace_axes=())
  np.testing.assert_allclose(k, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("layout", [("NHWC", "HWIO", "NHWC"),
                                    ("NCHW", "OIHW", "NCHW")])
@pytest.mark.parametrize("strides,padding,dilation,multiplier", [
    ((1, 1), "SAME", (1, 1), 1), ((2, 1), "VALID", (2, 1), 2),
    ((1, 2), ((2, 0), (1, 1)), (1, 1), 1)])
def test_depthwise_lowering_equals_the_convolution(layout, strides, padding,
                                                   dilation, multiplier):
  c = 3
  x = _rand(60, (2, 7, 6, c) if layout[0] == "NHWC" else (2, c, 7, 6))
  w = _rand(61, (3, 2, 1, c * multiplier) if layout[1] == "HWIO" else
            (c * multiplier, 1, 3, 2))
  conv = lambda x, w: lax.conv_general_dilated(
      x, w, strides, padding, rhs_dilation=dilation,
      dimension_numbers=layout, feature_group_count=c)
  eqn = jax.make_jaxpr(conv)(x, w).jaxpr.eqns[0]
  lowered = rule_table.evaluate(eqn, x, w)[0]
  np.testing.assert_allclose(lowered, conv(x, w), rtol=1e-5, atol=1e-5)


def test_depthwise_lowering_leaves_other_convolutions_alone():
  from autontk.methods.structured.rules.depthwise import depthwise
  x, w = _rand(62, (1, 5, 5, 4)), _rand(63, (3, 3, 2, 4))
  eqn = jax.make_jaxpr(lambda x, w: _conv(
      x, w, window_strides=(1, 1), padding="SAME",
      feature_group_count=2))(x, w).jaxpr.eqns[0]
  assert depthwise(eqn.params, x, w) is None  # two channels per group


@pytest.mark.parametrize("trace_axes,diagonal_axes", [
    ((), ()), ((-1,), ()), ((), (-1,)),
    pytest.param((-1,), (0,), marks=pytest.mark.slow)])
def test_depthwise_layer_between_parameters(trace_axes, diagonal_axes):
  # Cotangents flow back through a depthwise layer (its lowering is
  # transposed in the probing pass) to the stem, and its own kernel is a
  # use with the grouped-convolution structure.
  params = {"stem": _rand(64, (3, 3, 2, 4), 0.4),
            "dw": _rand(65, (3, 3, 1, 8), 0.4),
            "head": _rand(66, (8, 3), 0.4)}

  def f(p, x):
    h = jnp.tanh(_conv(x, p["stem"], window_strides=(1, 1), padding="SAME"))
    h = jnp.tanh(_conv(h, p["dw"], window_strides=(2, 1), padding="SAME",
                       feature_group_count=4))
    return h.mean((1, 2)) @ p["head"]

  case = (None, f, params, IMG, IMG2, 0)
  same = 0 in diagonal_axes
  k, ref = _run(case, RULES, trace_axes, diagonal_axes, same=same)
  np.testing.assert_allclose(k, ref, rtol=1e-4,
                             atol=1e-5 * np.abs(ref).max())


def test_parameter_as_output_and_unused_leaf():
  # A parameter returned as is (no equation consumes it), an output leaf
  # that does not depend on the parameters, and a parameter feeding two
  # leaves.
  f = lambda p, x: {"id": p["b"] * jnp.ones((x.shape[0], 1)) + 0 * x[:, :1],
                    "raw": p["b"], "const": x * 2.0,
                    "lin": x @ p["w"] + p["b"]}
  p = {"w": _rand(60, (3, 2)), "b": _rand(61, (2,))}
  fn = autontk.ntk_fn(f, trace_axes=(), implementation="structured_derivatives")
  k = fn(X, None, p)
  ref = reference_ntk(jax.jit(f), p, X, None, ())
  for key in ref:
    np.testing.assert_allclose(k[key], ref[key], rtol=1e-4, atol=1e-6)


def test_sharding_constraint_passes_parameter_through():
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  f = lambda p, x: jnp.tanh(x @ lax.with_sharding_constraint(p, sharding))
  case = (P.dot_general_p, f, _rand(70, (3, 4)), X, X2, 0)
  k, ref = _run(case, RULES)  # strict: no generic fallback needed
  np.testing.assert_allclose(k, ref, rtol=1e-4, atol=1e-6)
  assert _used_primitives(case, RULES) == {"dot_general"}


def test_output_bias_keeps_its_identity_cotangent():
  """A last layer's bias reaches the output as the identity: its pair costs
  O(N² O), not the O(N² O²) of a materialised O × O cotangent (compiled
  FLOPs, not time), and the kernel is exact."""
  n, o = 8, 512
  k1, k2 = jax.random.split(jax.random.PRNGKey(3))
  params = {"w": jax.random.normal(k1, (16, o)) / 4, "b": jnp.zeros(o)}

  def f(p, x):
    return jnp.tanh(x) @ p["w"] + p["b"]

  x1 = jax.random.normal(k2, (n, 16))
  ntk = autontk.ntk_fn(f, vmap_axes=0,
                       implementation="structured_derivatives")
  cost = jax.jit(lambda x, p: ntk(x, None, p)).lower(
      x1, params).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert cost["flops"] < 0.1 * 2 * n * n * o * o
  small = {"w": params["w"][:, :24], "b": params["b"][:24]}
  np.testing.assert_allclose(ntk(x1, None, small),
                             reference_ntk(f, small, x1, None, (-1,), ()),
                             rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("same_inputs", [True, False])
@pytest.mark.parametrize("o,trace", [(64, ()), (1, (-1,)), (8, (-1,))])
def test_hidden_bias_shares_its_weights_cotangent_gram(same_inputs, o, trace):
  """A hidden layer's weight and bias have the same cotangent: its Gram
  (``Σ_k C1[n, o, k] C2[m, o', k]`` with a full O × O kernel, a matrix
  ``Σ_{o,k} C1[n, o, k] C2[m, o, k]`` with the trace) is computed once
  (compiled FLOPs, not time); the kernel stays exact."""
  n, h = 24, 96
  ks = jax.random.split(jax.random.PRNGKey(5), 4)
  params = {"w1": jax.random.normal(ks[0], (8, h)) / 3,
            "b1": jax.random.normal(ks[1], (h,)) / 10,
            "w2": jax.random.normal(ks[2], (h, o)) / 10}

  def f(p, x):
    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"]

  def without_bias(p, x):
    return jnp.tanh(x @ p["w1"]) @ p["w2"]

  x1 = jax.random.normal(ks[3], (n, 8))
  x2 = None if same_inputs else x1[::-1] * 0.5

  def flops(g, p):
    ntk = autontk.ntk_fn(g, vmap_axes=0, trace_axes=trace,
                         implementation="structured_derivatives")
    cost = jax.jit(lambda a, b, q: ntk(a, b, q)).lower(
        x1, x2, p).compile().cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]

  no_b = {k: v for k, v in params.items() if k != "b1"}
  gram = 2 * n * n * (o if trace else o * o) * h
  assert flops(f, params) - flops(without_bias, no_b) < 0.1 * gram
  ntk = autontk.ntk_fn(f, vmap_axes=0, trace_axes=trace,
                       implementation="structured_derivatives")
  np.testing.assert_allclose(ntk(x1, x2, params),
                             reference_ntk(f, params, x1, x2, trace, ()),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("optimize", ["greedy", "optimal", True, False])
def test_contraction_path_options(optimize):
  """Every ``StructuredConfig.optimize`` jnp.einsum accepts gives the same
  kernel (the pair products run step by step along that path)."""
  f = lambda p, x: jnp.tanh(x @ p["w"] + p["b"]) @ p["v"]  # noqa: E731
  ks = jax.random.split(jax.random.PRNGKey(7), 4)
  params = {"w": jax.random.normal(ks[0], (3, 5)),
            "b": jax.random.normal(ks[1], (5,)),
            "v": jax.random.normal(ks[2], (5, 4))}
  x1 = jax.random.normal(ks[3], (3, 3))
  ntk = autontk.ntk_fn(f, trace_axes=(),
                       implementation="structured_derivatives")
  plan = Plan(Implementation.STRUCTURED_DERIVATIVES,
              StructuredConfig(optimize=optimize))
  np.testing.assert_allclose(ntk.execute(plan, x1, None, params),
                             reference_ntk(f, params, x1, None, (), ()),
                             rtol=1e-4, atol=1e-5)


def test_compiled_program_names_the_two_phases():
  """The cotangents and the pair products carry named scopes into the
  compiled program (what a profile shows), also through the re-evaluated
  jaxpr."""
  f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]  # noqa: E731
  params = {"w": jnp.ones((3, 5)) / 3, "v": jnp.ones((5, 2)) / 5}
  ntk = autontk.ntk_fn(f, vmap_axes=0,
                       implementation="structured_derivatives")
  text = jax.jit(lambda x, p: ntk(x, None, p)).lower(
      jnp.ones((4, 3)), params).compile().as_text()
  assert "structured_cotangents" in text and "structured_pairs" in text


def test_rewritten_convolutions_keep_their_phase():
  """A convolution in a non-canonical layout is rewritten before
  compiling; the rewrite keeps the equation's scope, so a profile counts
  the transposed convolution of the cotangents as cotangents."""
  def f(p, x):  # NCHW / OIHW: lax.conv's default, not the canonical layout
    h = jnp.tanh(jax.lax.conv(x, p["k1"], (1, 1), "SAME"))
    return jax.lax.conv(h, p["k2"], (1, 1), "SAME").sum((2, 3))
  params = {"k1": jnp.ones((4, 2, 3, 3)) / 9, "k2": jnp.ones((3, 4, 3, 3)) / 9}
  ntk = autontk.ntk_fn(f, vmap_axes=0,
                       implementation="structured_derivatives")
  text = jax.jit(lambda x, p: ntk(x, None, p)).lower(
      jnp.ones((2, 2, 5, 5)), params).compile().as_text()
  convs = re.findall(r'op_name="([^"]*conv_general_dilated[^"]*)"', text)
  assert convs and all("structured_" in name for name in convs), convs
