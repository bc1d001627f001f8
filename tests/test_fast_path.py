"""Calls as users make them: a seen signature runs its compiled program
without tracing, planning or validating again; anything that changes the
computation gets its own program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autontk
from reference import reference_ntk


def _counting_model():
  traces = []

  def f(p, x, scale=1.0, train=True):
    traces.append(1)  # runs only while JAX traces f
    h = jnp.tanh(x @ p["w"]) * scale
    return (h @ p["v"]) * p["n"] if train else h[:, :2]

  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  params = {"w": jax.random.normal(k1, (3, 8)), "v":
            jax.random.normal(k2, (8, 2)), "n": 2}
  return f, params, jax.random.normal(k3, (4, 3)), traces


@pytest.mark.parametrize("impl", ["structured_derivatives", "auto"])
def test_a_seen_signature_neither_traces_nor_plans_again(impl):
  f, params, x, traces = _counting_model()
  ntk = autontk.ntk_fn(f, implementation=impl, vmap_axes=0)
  k = ntk(x, None, params, scale=jnp.float32(0.5))
  seen = len(traces)
  for i in range(3):
    k2 = ntk(x + i, None, params, scale=jnp.float32(0.5 + i))
  assert len(traces) == seen
  assert len(ntk._calls) == 1
  want = reference_ntk(lambda p, xx: f(p, xx, scale=0.5), params, x, None)
  np.testing.assert_allclose(k, want, rtol=2e-4, atol=1e-5)
  assert k2.shape == k.shape


def test_what_changes_the_computation_gets_its_own_program():
  f, params, x, traces = _counting_model()
  ntk = autontk.ntk_fn(f, implementation="jacobian_contraction")
  ntk(x, None, params)
  ntk(x[:2], None, params)  # new shapes: jit's business, same program
  assert len(ntk._programs) == 1 and len(ntk._calls) == 2
  ntk(x, None, params, train=False)  # a Python constant of f
  ntk(x, None, {**params, "n": 3})  # a Python int among the params
  ntk(x, x[:3], params)  # x2 given
  assert len(ntk._programs) == 4
  # 1 and True are equal dict keys, but not the same constant of f.
  a = ntk(x, None, params, train=1)
  b = ntk(x, None, params, train=True)
  assert len(ntk._calls) == 7
  np.testing.assert_allclose(a, b)
  # The int parameter is a constant: the kernel scales with its square.
  np.testing.assert_allclose(ntk(x, None, {**params, "n": 3}) * 4,
                             ntk(x, None, params) * 9, rtol=1e-5)


def test_one_kwarg_as_array_then_constant_then_numpy():
  # The same tree, once an array kwarg (traced), once a Python float (a
  # constant of f), once NumPy inputs: each its own signature, each exact.
  f, params, x, _ = _counting_model()
  ntk = autontk.ntk_fn(f, implementation="structured_derivatives")
  want = reference_ntk(lambda p, xx: f(p, xx, scale=0.5), params, x, None)
  got = [ntk(x, None, params, scale=jnp.float32(0.5)),
         ntk(x, None, params, scale=0.5),
         ntk(np.asarray(x), None, params, scale=np.float32(0.5)),
         ntk(x, None, params, scale=jnp.float32(0.5))]
  assert len(ntk._calls) == 3
  for k in got:
    np.testing.assert_allclose(k, want, rtol=2e-4, atol=1e-5)


def test_unhashable_constants_still_work():
  def f(p, x, opts):
    return jnp.tanh(x @ p) * opts["scale"]

  ntk = autontk.ntk_fn(f, implementation=1)
  x, p = jnp.ones((2, 3)), jnp.ones((3, 4))
  a = ntk(x, None, p, opts={"scale": 2.0})  # a dict kwarg: a pytree
  b = ntk(x, None, p, opts={"scale": [2.0][0]})
  np.testing.assert_allclose(a, b)


def test_ntk_vp_fn_is_compiled_and_matches_the_kernel():
  f, params, x, traces = _counting_model()
  x2 = x[:3] * 0.5
  vp = autontk.ntk_vp_fn(f, x, x2, params)
  v = jax.random.normal(jax.random.PRNGKey(5), (3, 2))
  out = vp(v)
  seen = len(traces)
  for i in range(3):
    vp(v * i)
  assert len(traces) == seen  # no re-tracing per product
  k = autontk.ntk_fn(f, trace_axes=(), implementation=1)(x, x2, params)
  np.testing.assert_allclose(out, jnp.einsum("ijab,jb->ia", k, v),
                             rtol=2e-4, atol=1e-5)
  with pytest.raises(ValueError, match="`cotangents` leaf 0 has shape"):
    vp(jnp.ones((2, 2)))


def test_nngp_fn_is_compiled():
  f, params, x, traces = _counting_model()
  nngp = autontk.nngp_fn(f)
  a = nngp(x, None, params)
  seen = len(traces)
  nngp(x + 1, None, params)
  assert len(traces) == seen
  out = f(params, x)
  np.testing.assert_allclose(a, out @ out.T / out.shape[-1], rtol=1e-5)


def test_under_an_outer_jit_and_vmap():
  f, params, x, _ = _counting_model()
  ntk = autontk.ntk_fn(f, vmap_axes=0)
  want = ntk(x, None, params)
  got = jax.jit(lambda xx: ntk(xx, None, params))(x)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  batched = jax.vmap(lambda xx: ntk(xx, None, params))(jnp.stack([x, x]))
  np.testing.assert_allclose(batched[1], want, rtol=1e-5)
