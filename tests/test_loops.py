"""Loop structure and launch counts read from lowered and compiled programs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from autontk.costmodel import hlo, loop_counts, ops


def _texts(fn, *args):
  lowered = jax.jit(fn).lower(*args)
  return lowered.as_text(), lowered.compile().as_text()


def _times(structure: loop_counts.LoopStructure, opcode: str) -> list[float]:
  return sorted(o.times for o in structure.ops
                if ops.normalise(o.opcode) == opcode)


W = jnp.full((16, 16), 0.1)
X = jnp.ones((8, 16))
DOT = 2 * 8 * 16 * 16


def test_known_trip_count_multiplies_the_body():
  def f(x, w):
    return lax.fori_loop(0, 7, lambda i, x: jnp.tanh(x @ w), x)
  lowered, compiled = _texts(f, X, W)
  for structure in (loop_counts.stablehlo_loops(lowered),
                    loop_counts.hlo_loops(compiled)):
    assert (structure.loops, structure.unknown_trip_loops) == (1, 0)
    assert structure.loop_iterations == 7
  assert _times(loop_counts.stablehlo_loops(lowered), "dot") == [7.0]
  analysed = hlo.analyse_compiled(jax.jit(f).lower(X, W).compile())
  assert analysed.flops == pytest.approx(7 * DOT, rel=0.01)
  straight = loop_counts.hlo_loops(_texts(lambda x, w: jnp.tanh(x @ w), X, W)[1])
  body = hlo.compiled_loop_terms(compiled).kernels
  one = hlo.compiled_loop_terms(_texts(lambda x, w: jnp.tanh(x @ w), X,
                                       W)[1]).kernels
  assert straight.loop_iterations == 0
  assert body >= 7 * one  # each iteration launches the step's kernels


def test_nested_loops_multiply():
  def f(x, w):
    def outer(h, _):
      inner = lax.scan(lambda g, _: (jnp.tanh(g @ w), None), h, None,
                       length=5)[0]
      return inner, None
    return lax.scan(outer, x, None, length=3)[0]
  lowered, compiled = _texts(f, X, W)
  for structure in (loop_counts.stablehlo_loops(lowered),
                    loop_counts.hlo_loops(compiled)):
    assert structure.loops == 2
    assert structure.loop_iterations == 3 + 3 * 5
  assert _times(loop_counts.stablehlo_loops(lowered), "dot") == [15.0]
  for terms in (hlo.lowered_loop_terms(lowered),
                hlo.compiled_loop_terms(compiled)):
    assert terms.extra.flops == pytest.approx(14 * DOT, rel=0.01)


def test_scan_lowers_to_a_counted_while():
  xs = jnp.ones((6, 8, 16))
  def f(x, xs, w):
    return lax.scan(lambda h, xt: (jnp.tanh(h @ w + xt), h.sum()), x, xs)
  lowered, compiled = _texts(f, X, xs, W)
  assert "stablehlo.while" in lowered
  assert '"known_trip_count":{"n":"6"}' in compiled
  terms = hlo.lowered_loop_terms(lowered)
  assert (terms.iterations, terms.unknown_trip_loops) == (6.0, 0)
  assert terms.contraction_flops == 6 * DOT
  assert terms.extra.flops >= 5 * DOT


def test_data_dependent_loop_counts_once():
  def f(x):
    return lax.while_loop(lambda c: c[0].sum() < 100.0,
                          lambda c: (c[0] * 2.0, c[1] + 1), (x, 0))[0]
  lowered, compiled = _texts(f, X)
  for structure in (loop_counts.stablehlo_loops(lowered),
                    loop_counts.hlo_loops(compiled)):
    assert (structure.loops, structure.unknown_trip_loops) == (1, 1)
    assert structure.loop_iterations == 1


def test_branches_share_one_run():
  def f(x, i):
    return lax.switch(i, [jnp.sin, jnp.cos, jnp.tanh], x)
  lowered, compiled = _texts(f, X, 1)
  structure = loop_counts.stablehlo_loops(lowered)
  assert [_times(structure, op) for op in ("sine", "cosine", "tanh")] == [
      [pytest.approx(1 / 3)]] * 3
  assert loop_counts.hlo_loops(compiled).loops == 0


def test_tiny_cpu_loop_is_one_kernel():
  """XLA:CPU compiles a loop over 4×4 steps into one function."""
  if jax.default_backend() != "cpu":
    pytest.skip("an XLA:CPU compilation choice")
  w, x = jnp.full((4, 4), 0.1), jnp.ones((4, 4))
  _, compiled = _texts(
      lambda x, w: lax.fori_loop(0, 50, lambda i, x: jnp.tanh(x @ w), x), x, w)
  structure = loop_counts.hlo_loops(compiled)
  if 'xla_cpu_small_call="true"' not in compiled:
    pytest.skip("this XLA does not compile tiny loops into one function")
  assert structure.loop_iterations == 0
  assert any(not o.launched and o.times == 50 for o in structure.ops)
  assert hlo.compiled_loop_terms(compiled).kernels < 10


def test_hlo_text_without_jax():
  text = """HloModule m

%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]{0}) parameter(0)
  %x = f32[4]{0} get-tuple-element(%p), index=1
  %f = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused
  ROOT %t = (s32[], f32[4]{0}) tuple(%i, %f)
}

%cond (p: (s32[], f32[4])) -> pred[] {
  %p = (s32[], f32[4]{0}) parameter(0)
  ROOT %lt = pred[] fusion(%p), kind=kLoop, calls=%compare
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %w = (s32[], f32[4]{0}) while(%a), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"12"}}
  ROOT %c = f32[4]{0} copy(%a)
}
"""
  structure = loop_counts.hlo_loops(text)
  assert structure.loop_iterations == 12
  kernels = {o.line.split(" =")[0]: o.times for o in structure.ops
             if ops.is_kernel(o.opcode, compiled=True)}
  assert kernels == {"%f": 12.0, "ROOT %lt": 13.0, "ROOT %c": 1.0}


def test_kernels_of_a_deep_narrow_mlp_grow_with_depth():
  def mlp(depth):
    def f(x, w):
      for _ in range(depth):
        x = jnp.tanh(x @ w)
      return x
    return f
  lowered = [hlo.analyse_lowered(jax.jit(mlp(d)).lower(X, W)) for d in (2, 8)]
  compiled = [hlo.analyse_compiled(jax.jit(mlp(d)).lower(X, W).compile())
              for d in (2, 8)]
  for a, b in (lowered, compiled):
    assert b.kernels - a.kernels >= 6  # at least one kernel per layer
    assert a.inner_loop_iterations == b.inner_loop_iterations == 0


def test_instruction_parts():
  inst = loop_counts.hlo_instruction(
      '%w.5 = (s32[], f32[8,64]{1,0}) while(%tuple), condition=%c.1, '
      'body=%b.2, backend_config={"known_trip_count":{"n":"20"}}')
  assert (inst.name, inst.opcode, inst.operands) == ("w.5", "while",
                                                     ("tuple",))
  assert inst.type == "(s32[], f32[8,64]{1,0})"
  assert ops.hlo_tensors(inst.type)[1].bytes == 8 * 64 * 4
  assert loop_counts.hlo_instruction("}") is None
