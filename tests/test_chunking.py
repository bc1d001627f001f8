"""Chunked plans equal unchunked ones and the independent reference."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autontk
from autontk import methods
from autontk.chunking import BatchChunking, block_sizes
from reference import reference_ntk

METHODS = methods.available()


def _normal(key, shape):
  return jax.random.normal(key, shape, jnp.float32)


def _model():
  """Pytree in (batched leaf + unbatched leaf), pytree out, batched kwarg."""
  k = jax.random.split(jax.random.PRNGKey(0), 8)
  params = {"w": _normal(k[0], (3, 4)), "v": _normal(k[1], (4, 2)),
            "u": _normal(k[2], (4, 3)), "step": jnp.int32(1)}

  def f(p, x, scale):
    h = jnp.tanh(x["a"] @ p["w"] + x["s"]) * scale[:, None]
    return {"y": h @ p["v"],
            "z": jnp.sin(h[:, None, :] * p["u"].T[None]) @ p["v"]}

  x1 = {"a": _normal(k[3], (5, 3)), "s": _normal(k[4], (4,))}
  x2 = {"a": _normal(k[5], (3, 3)), "s": x1["s"]}
  s1 = 1.0 + 0.1 * _normal(k[6], (5,))
  s2 = 1.0 + 0.1 * _normal(k[7], (3,))
  vmap_axes = ({"a": 0, "s": None}, 0, {"scale": 0})
  return f, params, x1, x2, s1, s2, vmap_axes


F, PARAMS, X1, X2, S1, S2, VMAP = _model()

AXES = [((-1,), ()), ((), ()), ((0,), ()), ((-1,), (0,)), ((), (0, 1))]


@pytest.fixture(scope="module")
def kernel_fns():
  cache = {}

  def get(impl, trace, diag):
    key = (impl, trace, diag)
    if key not in cache:
      cache[key] = autontk.ntk_fn(F, trace_axes=trace, diagonal_axes=diag,
                                  vmap_axes=VMAP, implementation=impl)
    return cache[key]

  return get


def _check(actual, expected, rtol=2e-4):
  la, ta = jax.tree.flatten(actual)
  le, te = jax.tree.flatten(expected)
  assert ta == te
  for a, e in zip(la, le):
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    assert a.shape == e.shape
    np.testing.assert_allclose(a, e, rtol=rtol,
                               atol=1e-5 * max(np.abs(e).max(), 1e-30))


def _cases():
  """Every (scheme, axes, x2) combination; a fast subset runs by default.

  The fast subset covers every axes layout once with x2=None and the
  layouts whose blocks differ with an explicit x2 (kept batch axis, traced
  batch axis, diagonal batch axis); the host loop shares the block kernel
  and the assembly with the scan, so two of its layouts run by default.
  """
  fast = ({("scan", a, True) for a in AXES} |
          {("scan", a, False) for a in (AXES[0], AXES[2], AXES[4])} |
          {("host", AXES[1], True), ("host", AXES[3], False)})
  out = []
  for scheme in ("scan", "host"):
    for a in AXES:
      for same in (True, False):
        marks = () if (scheme, a, same) in fast else (pytest.mark.slow,)
        out.append(pytest.param(scheme, a, same, marks=marks,
                                id=f"{scheme}-{a}-{'x2=None' if same else 'x2'}"))
  return out


@pytest.mark.parametrize("impl", METHODS, ids=lambda m: m.name.lower())
@pytest.mark.parametrize("scheme, axes, same", _cases())
def test_chunked_equals_reference(kernel_fns, impl, scheme, axes, same):
  trace, diag = axes
  if not same and 0 in trace + diag:
    x2, kw = {"a": X1["a"][::-1], "s": X1["s"]}, {"scale": (S1, S1[::-1])}
  elif same:
    x2, kw = None, {"scale": S1}
  else:
    x2, kw = X2, {"scale": (S1, S2)}
  ntk = kernel_fns(impl, trace, diag)
  # block 2 does not divide 5: the last block is padded.
  plan = autontk.Plan(impl, chunking=BatchChunking(2, scheme))
  got = ntk.execute(plan, X1, x2, PARAMS, **kw)
  kw1 = {"scale": S1 if same else kw["scale"][0]}
  kw2 = None if same else {"scale": kw["scale"][1]}
  ref = reference_ntk(F, PARAMS, X1, x2, trace, diag, kw1, kw2)
  _check(got, ref)


@pytest.mark.parametrize("block", [3, 7])
def test_block_sizes_any(kernel_fns, block):
  impl = METHODS[0]
  ntk = kernel_fns(impl, (-1,), ())
  want = ntk(X1, None, PARAMS, scale=S1)
  got = ntk.execute(autontk.Plan(impl, chunking=BatchChunking(block)),
                    X1, None, PARAMS, scale=S1)
  _check(got, jax.tree.map(np.asarray, want), rtol=1e-5)


def _keys(cells):
  return [c.key for c in cells]


@pytest.mark.compat
def test_symmetric_grid_computes_upper_triangle_only():
  ntk = autontk.ntk_fn(F, vmap_axes=VMAP)
  problem = ntk.problem(X1, None, PARAMS, scale=S1)
  grid = BatchChunking(2).grid(problem)
  kinds = grid.by_kind()
  assert _keys(kinds["diag"]) == [(0, 0), (1, 1), (2, 2)]
  assert _keys(kinds["pair"]) == [(0, 1), (0, 2), (1, 2)]
  problem2 = ntk.problem(X1, X2, PARAMS, scale=(S1, S2))
  assert len(BatchChunking(2).grid(problem2).cells()) == 3 * 2
  diag_ntk = autontk.ntk_fn(F, diagonal_axes=(0,), vmap_axes=VMAP)
  g = BatchChunking(2).grid(diag_ntk.problem(X1, None, PARAMS, scale=S1))
  assert g.matched and list(g.by_kind()) == ["diag"]
  assert _keys(g.by_kind()["diag"]) == [(0, 0), (1, 1), (2, 2)]


def test_block_programs_per_kind_of_block():
  """The cost model's view: one program per kind, with its block count."""
  ntk = autontk.ntk_fn(F, vmap_axes=VMAP)
  problem = ntk.problem(X1, None, PARAMS, scale=S1)
  plan = autontk.Plan(METHODS[0])
  progs = BatchChunking(2).block_programs(plan, problem)
  assert [(p.kind, p.count) for p in progs] == [("diag", 3), ("pair", 3)]
  assert progs[0].key.same_inputs and not progs[1].key.same_inputs
  hash(progs[0].key)
  cost = BatchChunking(2).assembly_cost(problem)
  assert cost.peak_memory > 0 and cost.bytes_accessed == 2 * cost.peak_memory


def test_without_vmap_axes_chunking_is_refused():
  ntk = autontk.ntk_fn(lambda p, x: x @ p, implementation=1)
  plan = autontk.Plan(METHODS[0], chunking=BatchChunking(2))
  with pytest.raises(ValueError, match="vmap_axes"):
    ntk.execute(plan, jnp.ones((4, 3)), None, jnp.ones((3, 2)))


def test_unbatched_rng_kwarg_excludes_chunking():
  def f(p, x, rng):
    return x @ p + 0.0 * jax.random.normal(rng, (x.shape[0], 2))

  ntk = autontk.ntk_fn(f, vmap_axes=0, implementation=1)
  problem = ntk.problem(jnp.ones((4, 3)), None, jnp.ones((3, 2)),
                        rng=jax.random.PRNGKey(0))
  assert "rng" in autontk.chunking.unsupported_reason(problem)


def test_chunking_is_hashable_and_serialisable():
  c = BatchChunking(8, "host")
  assert hash(c) == hash(BatchChunking(8, "host"))
  plan = autontk.Plan(autontk.Implementation(1), chunking=c)
  d = json.loads(json.dumps(plan.to_dict()))
  assert autontk.Plan.from_dict(d).chunking == c
  with pytest.raises(dataclasses.FrozenInstanceError):
    c.block_size = 3  # type: ignore[misc]
  with pytest.raises(ValueError, match="block_size"):
    BatchChunking(0)
  with pytest.raises(ValueError, match="scheme"):
    BatchChunking(2, "threads")


def test_block_sizes_candidates():
  assert block_sizes(64) == [32, 16, 8, 4]
  assert block_sizes(5) == [3, 2]
  assert block_sizes(1) == []


def test_grid_clips_block_to_batch():
  ntk = autontk.ntk_fn(F, vmap_axes=VMAP)
  problem = ntk.problem(X1, X2, PARAMS, scale=(S1, S2))
  g = BatchChunking(4).grid(problem)
  assert (g.t1, g.t2, g.shape) == (4, 3, (2, 1))


@pytest.mark.compat
@pytest.mark.parametrize("trace, diag", [((), ()), ((0,), ()), ((), (1,))])
def test_batch_axis_not_first(trace, diag):
  """Inputs batched on axis 1, outputs on axis 1: blocks land in place."""
  w = _normal(jax.random.PRNGKey(7), (3, 2))

  def f(p, x):  # x: (3, N) -> (2, N)
    return jnp.tanh(p.T @ x)

  x = _normal(jax.random.PRNGKey(8), (3, 5))
  ntk = autontk.ntk_fn(f, trace_axes=trace, diagonal_axes=diag,
                       vmap_axes=(1, 1, None), implementation=METHODS[0])
  plan = autontk.Plan(METHODS[0], chunking=BatchChunking(2))
  got = ntk.execute(plan, x, None, w)
  _check(got, reference_ntk(f, w, x, None, trace, diag))
