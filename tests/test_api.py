"""The public API: kwargs splitting, jit, nngp_fn, ntk_vp_fn, implementations,
errors, and property tests over random MLPs."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import autontk
from autontk import methods
from helpers import assert_kernels_close
import models
from reference import reference_nngp, reference_ntk

METHODS = list(methods.available())


def _mlp():
  return models.mlp()


# Implementation parsing ------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    ("auto", autontk.Implementation.AUTO),
    ("jacobian_contraction", autontk.Implementation.JACOBIAN_CONTRACTION),
    ("NTK_VECTOR_PRODUCTS", autontk.Implementation.NTK_VECTOR_PRODUCTS),
    ("structured-derivatives", autontk.Implementation.STRUCTURED_DERIVATIVES),
    (0, autontk.Implementation.AUTO), (1, autontk.Implementation.JACOBIAN_CONTRACTION),
    (2, autontk.Implementation.NTK_VECTOR_PRODUCTS),
    (3, autontk.Implementation.STRUCTURED_DERIVATIVES),
    (autontk.Implementation.NTK_VECTOR_PRODUCTS,
     autontk.Implementation.NTK_VECTOR_PRODUCTS),
])
def test_implementation_parsing(value, expected):
  assert autontk.ntk_fn(lambda p, x: x, implementation=value).options.implementation is expected


@pytest.mark.parametrize("bad", [4, -1, "fastest", True, None, 1.0])
def test_unknown_implementation(bad):
  with pytest.raises(ValueError, match="`implementation`"):
    autontk.ntk_fn(lambda p, x: x, implementation=bad)


@pytest.mark.compat
def test_auto_computes_the_reference_kernel():
  case = _mlp()
  got = autontk.ntk_fn(case.f)(case.x1, case.x2, case.params)
  assert_kernels_close(got, reference_ntk(case.f, case.params, case.x1, case.x2))


# kwargs ----------------------------------------------------------------------

def _dropout_f(p, x, rng):
  keep = jax.random.bernoulli(rng, 0.5, (x.shape[0], 4))
  return jnp.where(keep, jnp.tanh(x @ p), 0.0)


@pytest.mark.parametrize("impl", METHODS, ids=lambda i: i.name.lower())
def test_rng_split_like_neural_tangents(impl):
  k = jax.random.split(jax.random.PRNGKey(3), 3)
  w = jax.random.normal(k[0], (3, 4))
  x1 = jax.random.normal(k[1], (4, 3))
  x2 = jax.random.normal(k[2], (4, 3))
  rng = jax.random.PRNGKey(7)
  ntk = autontk.ntk_fn(_dropout_f, trace_axes=(), implementation=impl)
  # x2 different: the second key is fold_in(rng, 1).
  want = reference_ntk(_dropout_f, w, x1, x2, (), (), {"rng": rng},
                       {"rng": jax.random.fold_in(rng, 1)})
  assert_kernels_close(ntk(x1, x2, w, rng=rng), want)
  # x2 None, or equal to x1: the same key on both sides.
  same = reference_ntk(_dropout_f, w, x1, None, (), (), {"rng": rng})
  assert_kernels_close(ntk(x1, None, w, rng=rng), same)
  assert_kernels_close(ntk(x1, x1 + 0.0, w, rng=rng), same)


def test_typed_prng_key_is_split():
  w = jnp.ones((3, 4))
  x1, x2 = jnp.ones((2, 3)), 2 * jnp.ones((2, 3))
  key = jax.random.key(5)
  got = autontk.ntk_fn(_dropout_f, trace_axes=(),
                       implementation=1)(x1, x2, w, rng=key)
  want = reference_ntk(_dropout_f, w, x1, x2, (), (), {"rng": key},
                       {"rng": jax.random.fold_in(key, 1)})
  assert_kernels_close(got, want)


def test_tuple_kwarg_is_split_and_others_shared():
  case = models.dropout_kwargs()
  got = autontk.ntk_fn(case.f, implementation=1)(
      case.x1, case.x2, case.params, shift=(1.0, -1.0), train=False)
  want = reference_ntk(case.f, case.params, case.x1, case.x2, (-1,), (),
                       {"shift": 1.0, "train": False},
                       {"shift": -1.0, "train": False})
  assert_kernels_close(got, want)


# jit and reuse ----------------------------------------------------------------

@pytest.mark.parametrize("impl", METHODS, ids=lambda i: i.name.lower())
def test_works_under_jit_with_rng(impl):
  case = models.dropout_kwargs()
  ntk = autontk.ntk_fn(case.f, implementation=impl)

  @jax.jit
  def k(x1, x2, p, rng):
    return ntk(x1, x2, p, rng=rng, shift=0.5, train=True)

  want = reference_ntk(case.f, case.params, case.x1, case.x2, (-1,), (),
                       {"rng": case.kwargs["rng"], "shift": 0.5},
                       {"rng": jax.random.fold_in(case.kwargs["rng"], 1),
                        "shift": 0.5})
  assert_kernels_close(k(case.x1, case.x2, case.params, case.kwargs["rng"]),
                       want)


def test_compiled_once_per_signature():
  case = _mlp()
  ntk = autontk.ntk_fn(case.f, implementation=1)
  ntk(case.x1, case.x2, case.params)
  ntk(case.x1 + 1, case.x2, case.params)
  ntk(case.x1, None, case.params)
  assert len(ntk._programs) == 2  # x2 given / x2 None


def test_non_float_params_are_constants():
  def f(p, x):
    return jnp.tanh(x @ p["w"]) * p["n"].astype(x.dtype) + p["flag"]

  p = {"w": jnp.ones((3, 2)), "n": jnp.int32(3), "flag": jnp.bool_(True)}
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 3))
  for impl in METHODS:
    got = autontk.ntk_fn(f, trace_axes=(), implementation=impl)(x, None, p)
    assert_kernels_close(got, reference_ntk(f, p, x, None, (), ()))


def test_no_differentiable_params_gives_zeros():
  f = lambda p, x: x * p
  k = autontk.ntk_fn(f, implementation=1)(jnp.ones((2, 3)), None, jnp.int32(2))
  assert k.shape == (2, 2) and not np.any(np.asarray(k))


# nngp_fn and ntk_vp_fn ---------------------------------------------------------

@pytest.mark.parametrize("axes", [((-1,), ()), ((), ()), ((), (0,)), ((0,), ())])
def test_nngp_fn(axes):
  case = models.sequence_mlp(n1=2, n2=2)
  got = autontk.nngp_fn(case.f, trace_axes=axes[0], diagonal_axes=axes[1])(
      case.x1, case.x2, case.params)
  assert_kernels_close(got, reference_nngp(case.f, case.params, case.x1,
                                           case.x2, *axes))


def test_nngp_fn_pytree_and_x2_none():
  case = models.pytree_io()
  got = autontk.nngp_fn(case.f)(case.x1, None, case.params)
  assert_kernels_close(got, reference_nngp(case.f, case.params, case.x1, None))


def test_ntk_vp_fn_matches_kernel_times_vector():
  case = models.sequence_mlp(n1=2, n2=3)
  vp = autontk.ntk_vp_fn(case.f, case.x1, case.x2, case.params)
  v = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2))
  full = reference_ntk(case.f, case.params, case.x1, case.x2, (), ())
  # full: (N1, N2, T1, T2, O1, O2); Θ·v sums over x2's entries.
  want = np.einsum("abcdef,bdf->ace", full, np.asarray(v, np.float64))
  np.testing.assert_allclose(np.asarray(vp(v)), want, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="cotangents"):
    vp(jnp.ones((2, 3, 2)))


def test_ntk_vp_fn_pytree():
  case = models.pytree_io()
  vp = autontk.ntk_vp_fn(case.f, case.x1, None, case.params)
  ct = jax.tree.map(jnp.ones_like, case.f(case.params, case.x1))
  out = vp(ct)
  assert jax.tree.structure(out) == jax.tree.structure(ct)
  # Under an outer jit (as in a jitted solver), and with NumPy cotangents.
  again = jax.jit(vp)(ct)
  from_numpy = vp(jax.tree.map(np.asarray, ct))
  for a, b, c in zip(jax.tree.leaves(out), jax.tree.leaves(again),
                     jax.tree.leaves(from_numpy)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="structure of f"):
    vp(jax.tree.leaves(ct))


# Errors -----------------------------------------------------------------------

def test_error_x_structure_mismatch():
  case = models.pytree_io()
  ntk = autontk.ntk_fn(case.f, implementation=1)
  with pytest.raises(ValueError, match="`x1` and `x2`.*structure"):
    ntk(case.x1, {"a": case.x1["a"]}, case.params)


def test_error_non_batch_shape_mismatch():
  case = _mlp()
  ntk = autontk.ntk_fn(case.f, implementation=1)
  with pytest.raises(ValueError, match="outside the batch axis"):
    ntk(case.x1, jnp.ones((2, 5)), case.params)


@pytest.mark.parametrize("kw,match", [
    ({"trace_axes": (2,)}, "`trace_axes` contains axis 2, out of range"),
    ({"diagonal_axes": (-3,)}, "`diagonal_axes` contains axis -3"),
    ({"trace_axes": (1,), "diagonal_axes": (-1,)}, "overlap"),
    ({"trace_axes": (1, -1)}, "more than once"),
    ({"trace_axes": "x"}, "`trace_axes` must be an int"),
])
def test_error_axes(kw, match):
  case = _mlp()
  with pytest.raises((ValueError, TypeError), match=match):
    autontk.ntk_fn(case.f, implementation=1, **kw)(case.x1, case.x2,
                                                   case.params)


def test_error_diagonal_batch_axis_needs_equal_batches():
  case = _mlp()
  ntk = autontk.ntk_fn(case.f, diagonal_axes=(0,), implementation=1)
  with pytest.raises(ValueError, match="diagonal axis 0"):
    ntk(case.x1, case.x2, case.params)


def test_error_traced_axis_mismatch():
  def f(p, x):
    return jnp.tile(x @ p, (1, x.shape[0]))   # output width depends on N

  w = jnp.ones((3, 2))
  ntk = autontk.ntk_fn(f, implementation=1)
  with pytest.raises(ValueError, match="traced axis 1"):
    ntk(jnp.ones((2, 3)), jnp.ones((3, 3)), w)


@pytest.mark.parametrize("vmap_axes,match", [
    (3, "out of range"),
    (2, "vmap_axes"),
    ((0, 1, {}), "different sizes"),
    ((0, 0, {"nope": 0}), "names kwargs"),
    ((0, "a", {}), "must be ints"),
])
def test_error_vmap_axes(vmap_axes, match):
  case = models.sequence_mlp(n1=2, n2=2)
  ntk = autontk.ntk_fn(case.f, vmap_axes=vmap_axes, implementation=1)
  with pytest.raises((ValueError, TypeError), match=match):
    ntk(case.x1, case.x2, case.params)


def test_error_non_callable_and_int_outputs():
  with pytest.raises(TypeError, match="`f` must be callable"):
    autontk.ntk_fn(3)
  ntk = autontk.ntk_fn(lambda p, x: (x @ p).astype(jnp.int32), implementation=1)
  with pytest.raises(TypeError, match="floating-point outputs"):
    ntk(jnp.ones((2, 3)), None, jnp.ones((3, 2)))


@pytest.mark.parametrize("impl", ["auto", "jacobian_contraction"])
def test_error_inputs_that_are_not_arrays(impl):
  ntk = autontk.ntk_fn(lambda p, x: jnp.tanh(x @ p), implementation=impl)
  p = jnp.ones((3, 2))
  with pytest.raises(TypeError, match=r"`x1` leaf 0 is a str \('abc'\)"):
    ntk("abc", None, p)
  with pytest.raises(TypeError, match="`x2` leaf 1 is a object"):
    ntk([jnp.ones((2, 3))] * 2, [jnp.ones((2, 3)), object()], p)


def test_error_complex_params():
  ntk = autontk.ntk_fn(lambda p, x: jnp.real(x @ p), implementation=1)
  with pytest.raises(TypeError, match="complex"):
    ntk(jnp.ones((2, 3)), None, jnp.ones((3, 2), jnp.complex64))


# Property tests -----------------------------------------------------------------

@pytest.mark.slow
@settings(max_examples=12, deadline=None)
@given(n1=st.integers(1, 3), n2=st.integers(1, 3), d=st.integers(1, 4),
       widths=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       axes=st.sampled_from([((-1,), ()), ((), ()), ((), (1,)), ((1,), (0,)),
                             ((0,), ()), ((0, 1), ()), ((), (0, 1))]),
       impl=st.sampled_from(METHODS), vmap=st.sampled_from([None, 0]),
       seed=st.integers(0, 1000))
def test_random_mlps(n1, n2, d, widths, axes, impl, vmap, seed):
  trace, diag = axes
  if 0 in trace + diag:
    n2 = n1
  case = models.mlp(n1=n1, n2=n2, d=d, widths=tuple(widths), seed=seed)
  got = autontk.ntk_fn(case.f, trace_axes=trace, diagonal_axes=diag,
                       vmap_axes=vmap, implementation=impl, jit=False)(
                           case.x1, case.x2, case.params)
  assert_kernels_close(got, reference_ntk(case.f, case.params, case.x1,
                                          case.x2, trace, diag))


# Functions that support only one autodiff mode ----------------------------------

@jax.custom_vjp
def _sin_custom(x):
  return jnp.sin(x)


_sin_custom.defvjp(lambda x: (jnp.sin(x), jnp.cos(x)),
                   lambda c, g: (g * c,))


def _custom_vjp_f(p, x):
  return _sin_custom(x @ p["w"]) @ p["v"]


def _while_f(p, x):
  def body(c):
    return c[0] + 1, jnp.tanh(c[1] @ p["w"])
  return jax.lax.while_loop(lambda c: c[0] < 2, body, (0, x))[1] @ p["v"]


@pytest.mark.compat
@pytest.mark.parametrize("impl", METHODS, ids=lambda i: i.name.lower())
@pytest.mark.parametrize("f", [_custom_vjp_f, _while_f],
                         ids=["custom_vjp", "while_loop"])
def test_single_mode_autodiff(f, impl):
  k = jax.random.split(jax.random.PRNGKey(4), 4)
  p = {"w": jax.random.normal(k[0], (3, 3)), "v": jax.random.normal(k[1], (3, 2))}
  x1, x2 = jax.random.normal(k[2], (2, 3)), jax.random.normal(k[3], (3, 3))
  ntk = autontk.ntk_fn(f, trace_axes=(), vmap_axes=0, implementation=impl)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # while: falls back to fwd
    got = ntk(x1, x2, p)
  assert_kernels_close(got, reference_ntk(f, p, x1, x2, (), ()))


def test_replace_keeps_f_and_changes_options():
  case = _mlp()
  ntk = autontk.ntk_fn(case.f, implementation=1)
  full = ntk.replace(trace_axes=())
  assert full.f is ntk.f and full.options.trace_axes == ()
  assert full(case.x1, case.x2, case.params).shape == (3, 2, 3, 3)


@pytest.mark.parametrize("impl", METHODS, ids=lambda i: i.name.lower())
def test_batch_axis_last_without_vmap_axes(impl):
  """Without vmap_axes nothing assumes axis 0 when f accepts the inputs."""
  k = jax.random.split(jax.random.PRNGKey(8), 3)
  w = jax.random.normal(k[0], (3, 4))
  f = lambda p, x: jnp.tanh(p @ x)            # x: (4, N) -> (3, N)
  x1, x2 = jax.random.normal(k[1], (4, 2)), jax.random.normal(k[2], (4, 3))
  for trace in [(), (0,)]:
    got = autontk.ntk_fn(f, trace_axes=trace, implementation=impl)(x1, x2, w)
    assert_kernels_close(got, reference_ntk(f, w, x1, x2, trace, ()))
