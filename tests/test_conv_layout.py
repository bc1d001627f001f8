"""Convolutions rewritten into the CPU backend's canonical layout keep their
values, at any depth, and leave no other layout in a compiled loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autontk._conv_layout import canonical_convolutions

pytestmark = pytest.mark.compat

CASES = [
    # (lhs shape, rhs shape, dimension numbers, conv kwargs)
    ((3, 4, 9, 7), (6, 2, 3, 2), ("NCHW", "OIHW", "NHCW"),
     dict(window_strides=(2, 1), padding=[(1, 0), (0, 2)],
          rhs_dilation=(1, 2), feature_group_count=2)),
    ((2, 7, 5, 4), (3, 3, 1, 4), ("NHWC", "HWIO", "NHWC"),
     dict(window_strides=(1, 1), padding="SAME", feature_group_count=4)),
    ((4, 6, 3), (3, 3, 5), ("NWC", "WIO", "NCW"),
     dict(window_strides=(1,), padding=[(1, 2)], lhs_dilation=(2,))),
    ((2, 3, 4, 5, 2), (2, 2, 2, 3, 2), ("NCDHW", "DHWIO", "NDHWC"),
     dict(window_strides=(1, 1, 1), padding="SAME")),
]


def _conv(dn, kw):
  return lambda x, k: jax.lax.conv_general_dilated(
      x, k, dimension_numbers=dn, **kw)


def _arrays(lhs, rhs):
  kx, kk = jax.random.split(jax.random.PRNGKey(0))
  return (jax.random.normal(kx, lhs, jnp.float32),
          jax.random.normal(kk, rhs, jnp.float32))


@pytest.mark.parametrize("lhs,rhs,dn,kw", CASES)
def test_values_and_gradients_unchanged(lhs, rhs, dn, kw):
  conv = _conv(dn, kw)
  x, k = _arrays(lhs, rhs)
  np.testing.assert_allclose(canonical_convolutions(conv)(x, k), conv(x, k),
                             rtol=1e-5, atol=1e-5)
  grad = jax.grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k))), (0, 1))
  for got, want in zip(canonical_convolutions(grad)(x, k), grad(x, k)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _kernel_gradient_in_scan(w, h, c):
  conv = _conv(("NHWC", "HWIO", "NHWC"), dict(window_strides=(1, 1),
                                              padding="SAME"))

  def step(acc, a):
    g = jax.vjp(lambda w: conv(a[0], w), w)[1](a[1])[0]
    return acc + jax.lax.cond(a[2] > 0, lambda g: g, lambda g: 2 * g, g), None

  return jax.lax.scan(step, jnp.zeros_like(w), (h, c, jnp.arange(4)))[0]


def _dim_labels(fn, *args):
  text = jax.jit(fn).lower(*args).compile().as_text()
  return [line.split("dim_labels=")[1].split(",")[0]
          for line in text.splitlines() if " convolution(" in line]


def test_loop_bodies_rewritten_at_any_depth():
  w = jnp.ones((3, 3, 2, 3))
  h, c = _arrays((4, 5, 6, 6, 2), (4, 5, 6, 6, 3))
  got = jax.jit(canonical_convolutions(_kernel_gradient_in_scan))(w, h, c)
  np.testing.assert_allclose(got, _kernel_gradient_in_scan(w, h, c),
                             rtol=1e-4, atol=1e-4)
  if jax.default_backend() == "cpu":
    # XLA's own canonicalisation skips loop bodies; the rewrite does not.
    assert "b01f_01io->b01f" not in set(_dim_labels(
        _kernel_gradient_in_scan, w, h, c))
    assert set(_dim_labels(canonical_convolutions(_kernel_gradient_in_scan),
                           w, h, c)) == {"b01f_01io->b01f"}


def test_pytrees_in_and_out():
  fn = canonical_convolutions(lambda d: {"y": d["a"] + 1, "z": (d["b"],)})
  out = fn({"a": jnp.ones(2), "b": jnp.zeros(3)})
  np.testing.assert_allclose(out["y"], 2.0)
  assert out["z"][0].shape == (3,)
