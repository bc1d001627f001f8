"""Every method against the independent reference, over model families and
every axes option."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autontk
from autontk import Implementation, _compat, methods
from autontk.methods import registry
from helpers import assert_kernels_close, split_kwargs_by_hand
import models
from reference import reference_ntk

METHODS = [i for i in methods.available()]
CASES = {c.name: c for c in models.ALL()}


def test_every_implementation_has_a_registered_method():
  """The sweeps below are built from ``methods.available()``: a method
  module that is not imported would shrink them silently."""
  assert set(METHODS) == set(Implementation) - {Implementation.AUTO}
  for impl in METHODS:
    assert methods.get(impl).implementation is impl


def test_a_missing_or_doubled_registration_fails_loudly(monkeypatch):
  monkeypatch.delitem(registry._REGISTRY,  # noqa: SLF001
                      Implementation.NTK_VECTOR_PRODUCTS)
  with pytest.raises(ImportError, match="ntk_vector_products"):
    registry.check_complete()
  with pytest.raises(ValueError, match="already registered"):
    registry.register(Implementation.JACOBIAN_CONTRACTION)(lambda p, c: [])
  with pytest.raises(ValueError, match="not one"):
    registry.register(Implementation.AUTO)

# (trace_axes, diagonal_axes, vmap, x2 given) per model family.
FAMILY_CONFIGS = [
    ((-1,), (), None, True),
    ((), (), 0, False),
    ((), (0,), 0, True),
]


def _check(case, impl, trace_axes, diagonal_axes, vmap, use_x2, jit=True):
  x2 = case.x2 if use_x2 else None
  ntk = autontk.ntk_fn(case.f, trace_axes=trace_axes,
                       diagonal_axes=diagonal_axes, vmap_axes=vmap,
                       implementation=impl, jit=jit)
  got = ntk(case.x1, x2, case.params, **case.kwargs)
  kw1, kw2 = split_kwargs_by_hand(case.kwargs, case.x1, x2)
  want = reference_ntk(case.f, case.params, case.x1, x2, trace_axes,
                       diagonal_axes, kw1, kw2)
  assert_kernels_close(got, want)


# Every family with the first configuration; the other two (vmap_axes,
# x2=None, a diagonal batch axis) on a few families in the fast suite, on all
# of them with -m slow (test_axes_sweep checks every axes option).
_FAST_VMAP_FAMILIES = ("mlp", "pytree_io")


def _family_params():
  ids = ["trace-x2", "full-vmap-x2none", "diag0-vmap"]
  for config, cid in zip(FAMILY_CONFIGS, ids):
    for name in sorted(CASES):
      if config[2] is not None and not CASES[name].vmap_ok:
        continue  # the model mixes examples: vmap_axes does not apply
      slow = ((cid != "trace-x2" and name not in _FAST_VMAP_FAMILIES) or
              name == "flax_cnn")
      # The first configuration on every family is the compatibility
      # job's check that every method is exact on the oldest JAX.
      marks = ([pytest.mark.slow] if slow else
               [pytest.mark.compat] if cid == "trace-x2" else [])
      yield pytest.param(config, name, id=f"{cid}-{name}", marks=marks)


@pytest.mark.parametrize("impl", METHODS, ids=lambda i: i.name.lower())
@pytest.mark.parametrize("config,name", list(_family_params()))
def test_model_families(name, impl, config):
  case = CASES[name]
  trace_axes, diagonal_axes, vmap, use_x2 = config
  if 0 in diagonal_axes and use_x2:
    # Diagonal over the batch axis needs N1 == N2.
    case = models.Case(case.name, case.f, case.params, case.x1,
                       _same_batch(case.x1, case.x2), case.kwargs,
                       case.vmap_ok)
  _check(case, impl, trace_axes, diagonal_axes, vmap, use_x2)


def _same_batch(x1, x2):
  """x2 resized to x1's batch size (axis 0), keeping x2's values."""
  def fit(a, b):
    n = a.shape[0]
    reps = -(-n // b.shape[0])
    return jnp.concatenate([b] * reps)[:n]
  return jax.tree.map(fit, x1, x2)


def _axes_options(ndim):
  """Every assignment of each axis to traced / diagonal / kept."""
  for kinds in itertools.product("tdk", repeat=ndim):
    trace = tuple(i for i, k in enumerate(kinds) if k == "t")
    diag = tuple(i for i, k in enumerate(kinds) if k == "d")
    yield trace, diag


AXES = list(_axes_options(3))


def _sweep_params():
  """Every axes option with structured derivatives (the method with the
  most machinery); the other methods on every other option in the fast
  suite, on all of them with -m slow."""
  for impl in METHODS:
    for i, axes in enumerate(AXES):
      slow = impl.name != "STRUCTURED_DERIVATIVES" and i % 2
      yield pytest.param(impl, axes, id=f"{impl.name.lower()}-t{axes[0]}d"
                         f"{axes[1]}",
                         marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("impl,axes", list(_sweep_params()))
def test_axes_sweep(impl, axes):
  """All 27 trace/diagonal assignments of a rank-3 output, vmap on and off."""
  trace, diag = axes
  case = models.sequence_mlp(n1=2, n2=2)
  for vmap in (None, 0):
    _check(case, impl, trace, diag, vmap, True, jit=False)


@pytest.mark.parametrize("impl", METHODS, ids=lambda i: i.name.lower())
def test_negative_axes_and_x2_none(impl):
  case = models.sequence_mlp(n1=3)
  for trace, diag in [((-1,), (-3,)), ((-2, -1), ()), ((-3,), (-1,))]:
    _check(case, impl, trace, diag, 0, False, jit=False)
    _check(case, impl, trace, diag, None, False, jit=False)


@pytest.mark.parametrize("impl", [
    pytest.param(i, marks=[pytest.mark.slow] if i.name !=
                 "STRUCTURED_DERIVATIVES" else [pytest.mark.compat])
    for i in METHODS],
    ids=lambda i: i.name.lower())
def test_float64(impl):
  with _compat.enable_x64(True):
    case = models.mlp()
    case.params = jax.tree.map(lambda a: a.astype(jnp.float64), case.params)
    case.x1 = case.x1.astype(jnp.float64)
    case.x2 = case.x2.astype(jnp.float64)
    ntk = autontk.ntk_fn(case.f, trace_axes=(), implementation=impl)
    got = ntk(case.x1, case.x2, case.params)
    assert got.dtype == jnp.float64
    want = reference_ntk(case.f, case.params, case.x1, case.x2, (), ())
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", METHODS, ids=lambda i: i.name.lower())
def test_vmap_axes_triple_with_batched_kwargs(impl):
  """Batch on axis 1 of x and of the output, and a kwarg batched on axis 0."""
  k = jax.random.split(jax.random.PRNGKey(0), 4)
  w = jax.random.normal(k[0], (3, 2))

  def f(p, x, scale):
    # x: (T, N, 3); scale: (N,) -> out (2, N)
    return (jnp.tanh(jnp.einsum("tnd,de->ne", x, p)) * scale[:, None]).T

  x1 = jax.random.normal(k[1], (2, 4, 3))
  x2 = jax.random.normal(k[2], (2, 3, 3))
  s1, s2 = jnp.arange(1.0, 5.0), jnp.arange(2.0, 5.0)
  ntk = autontk.ntk_fn(f, trace_axes=(), implementation=impl,
                       vmap_axes=(1, 1, {"scale": 0}))
  got = ntk(x1, x2, w, scale=(s1, s2))
  want = reference_ntk(f, w, x1, x2, (), (), {"scale": s1}, {"scale": s2})
  assert_kernels_close(got, want)


def test_methods_agree_under_jit():
  case = models.attention()
  outer = {}
  for impl in METHODS:
    ntk = autontk.ntk_fn(case.f, trace_axes=(), implementation=impl,
                         vmap_axes=0)
    outer[impl] = jax.jit(lambda a, b, p, ntk=ntk: ntk(a, b, p))(
        case.x1, case.x2, case.params)
  base = np.asarray(outer[METHODS[0]])
  for impl, k in outer.items():
    np.testing.assert_allclose(np.asarray(k), base, rtol=1e-4,
                               atol=1e-5 * np.abs(base).max(), err_msg=str(impl))
