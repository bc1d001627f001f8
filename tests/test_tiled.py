"""ntk_tiled on one process and one device: values, layouts, storage, errors.

Multi-device, multi-process and kill-and-resume runs are in
``test_tiled_subprocess.py``.
"""

from __future__ import annotations

import gc
import json
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import autontk
from autontk.costmodel import hlo
from autontk.tiled import storage
from reference import reference_ntk

RTOL = 1e-5


def _keys(seed, n):
  return jax.random.split(jax.random.PRNGKey(seed), n)


def mlp_model():
  k = _keys(0, 4)
  params = {"w": jax.random.normal(k[0], (3, 8)) / 3 ** 0.5,
            "b": jnp.zeros((8,)), "v": jax.random.normal(k[1], (8, 2)),
            "steps": jnp.int32(2)}  # integer leaf: a constant

  def f(p, x):
    return jnp.tanh(x @ p["w"] + p["b"]) @ p["v"] * p["steps"]

  return f, params, jax.random.normal(k[2], (7, 3)), jax.random.normal(
      k[3], (5, 3))


def cnn_model():
  k = _keys(1, 5)
  params = (jax.random.normal(k[0], (3, 3, 2, 4)) / 4,
            jax.random.normal(k[1], (4 * 4 * 4, 3)) / 8)

  def f(p, x):
    y = lax.conv_general_dilated(x, p[0], (1, 1), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = jax.nn.relu(y)
    return y.reshape(y.shape[0], -1) @ p[1]

  return f, params, jax.random.normal(k[2], (6, 4, 4, 2)), jax.random.normal(
      k[3], (5, 4, 4, 2))


def pytree_model():
  """Dict inputs, a rank-3 output leaf and a rank-2 one."""
  k = _keys(2, 5)
  params = [jax.random.normal(k[0], (2, 3)), jax.random.normal(k[1], (3,))]

  def f(p, x):
    h = jnp.sin(x["seq"] @ p[0]) * x["scale"][:, None, None]
    return {"seq": h, "pooled": jnp.mean(h, axis=1) * p[1]}

  def data(key, n):
    a, b = jax.random.split(key)
    return {"seq": jax.random.normal(a, (n, 4, 2)),
            "scale": 1 + jax.random.uniform(b, (n,))}

  return f, params, data(k[2], 7), data(k[3], 5)


def _max_rel(a, b):
  errs = []
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert x.shape == y.shape
    errs.append(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30))
  return max(errs)


def _assert_same_structure(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)


CASES = [
    # model, ntk_fn options, x2 given, tile, implementation
    ("mlp", {}, False, 3, "jacobian_contraction"),
    ("mlp", {}, True, (3, 2), "ntk_vector_products"),
    ("mlp", {"diagonal_axes": (0,), "vmap_axes": 0}, False, 3,
     "jacobian_contraction"),
    ("mlp", {"trace_axes": (0, -1)}, True, 2, "jacobian_contraction"),
    pytest.param("cnn", {"vmap_axes": 0}, True, (4, 3),
                 "jacobian_contraction", marks=pytest.mark.slow),
    pytest.param("pytree", {"trace_axes": (), "diagonal_axes": (-1,),
                            "vmap_axes": 0}, False, 3, "ntk_vector_products",
                 marks=pytest.mark.slow),
    ("pytree", {"trace_axes": (0,), "diagonal_axes": (-1,)}, True, 3,
     "jacobian_contraction"),
]

MODELS = {"mlp": mlp_model, "cnn": cnn_model, "pytree": pytree_model}


@pytest.mark.parametrize("name,opts,with_x2,tile,impl", CASES)
def test_tiled_equals_single_shot(name, opts, with_x2, tile, impl):
  f, params, x1, x2 = MODELS[name]()
  matched = 0 in opts.get("diagonal_axes", ()) or 0 in opts.get(
      "trace_axes", (-1,))
  if with_x2 and matched:  # a matched batch axis needs equal batch sizes
    x2 = jax.tree.map(lambda a: a[::-1] * 0.5, x1)
  x2 = x2 if with_x2 else None
  ntk = autontk.ntk_fn(f, implementation=impl, **opts)
  got = autontk.ntk_tiled(ntk, x1, x2, params, tile=tile, progress=False)
  want = ntk(x1, x2, params)
  _assert_same_structure(got, want)
  assert _max_rel(got, want) < RTOL
  ref = reference_ntk(f, params, x1, x2,
                      trace_axes=opts.get("trace_axes", (-1,)),
                      diagonal_axes=opts.get("diagonal_axes", ()))
  assert _max_rel(got, ref) < 1e-4


@pytest.mark.compat
def test_symmetric_output_is_mirrored_exactly():
  f, params, x1, _ = mlp_model()
  ntk = autontk.ntk_fn(f, trace_axes=(), implementation="jacobian_contraction")
  k = autontk.ntk_tiled(ntk, x1, None, params, tile=2, progress=False)
  # Θ(x, x)[n, m, o, p] == Θ(x, x)[m, n, p, o], bit for bit off the diagonal
  # tiles, which are written as transposes of the upper ones.
  np.testing.assert_array_equal(k[:2, 2:], np.transpose(k[2:, :2],
                                                        (1, 0, 3, 2)))
  assert _max_rel(k, ntk(x1, None, params)) < RTOL
  # x2 given as x1 itself is symmetric too (same tiles, same bits).
  np.testing.assert_array_equal(
      autontk.ntk_tiled(ntk, x1, x1, params, tile=2, progress=False), k)


def test_batched_and_shared_kwargs():
  k = _keys(3, 4)
  params = jax.random.normal(k[0], (3, 2))

  def f(p, x, scale, bias):
    return jnp.tanh(x @ p) * scale[:, None] + bias

  x1 = jax.random.normal(k[1], (5, 3))
  x2 = jax.random.normal(k[2], (4, 3))
  scale = (jnp.arange(1.0, 6.0), jnp.arange(2.0, 6.0))  # per side, batched
  bias = jnp.ones((2,))  # shared
  ntk = autontk.ntk_fn(f, vmap_axes=(0, 0, {"scale": 0}),
                       implementation="jacobian_contraction")
  got = autontk.ntk_tiled(ntk, x1, x2, params, tile=(2, 3), progress=False,
                          scale=scale, bias=bias)
  want = ntk(x1, x2, params, scale=scale, bias=bias)
  assert _max_rel(got, want) < RTOL


def test_vmap_axes_not_leading(tmp_path):
  k = _keys(4, 3)
  params = jax.random.normal(k[0], (3, 2))

  def f(p, x):  # x: (features, N), output (O, N)
    return jnp.tanh(p.T @ x)

  x1 = jax.random.normal(k[1], (3, 5))
  ntk = autontk.ntk_fn(f, vmap_axes=1, trace_axes=(),
                       implementation="jacobian_contraction")
  got = autontk.ntk_tiled(ntk, x1, None, params, tile=2, progress=False)
  want = ntk(x1, None, params)
  assert got.shape == want.shape == (2, 2, 5, 5)
  assert _max_rel(got, want) < RTOL
  # On disk, each tile is a strided region of the C-ordered file.
  on_disk = autontk.ntk_tiled(ntk, x1, None, params, tile=2, progress=False,
                              out=tmp_path / "run")
  np.testing.assert_array_equal(on_disk, got)


@pytest.mark.compat
def test_disk_output_and_manifest(tmp_path):
  f, params, x1, x2 = cnn_model()
  ntk = autontk.ntk_fn(f, vmap_axes=0, implementation="jacobian_contraction")
  out = tmp_path / "run"
  got = autontk.ntk_tiled(ntk, x1, x2, params, tile=(4, 2), out=out,
                          progress=False)
  assert isinstance(got, np.memmap)
  np.testing.assert_array_equal(np.load(out / "kernel_0.npy"), got)
  lines = (out / "manifest.jsonl").read_text().splitlines()
  assert sorted(tuple(json.loads(s)["tile"]) for s in lines) == [
      (i, j) for i in range(2) for j in range(3)]
  assert _max_rel(got, ntk(x1, x2, params)) < RTOL
  from autontk.tiled import run_status
  assert run_status(out) == {"done": 6, "total": 6, "tile": (4, 2),
                             "complete": True}
  # A finished run is not recomputed: resuming appends nothing.
  again = autontk.ntk_tiled(ntk, x1, x2, params, tile=(4, 2), out=out,
                            progress=False)
  np.testing.assert_array_equal(again, got)
  assert (out / "manifest.jsonl").read_text().splitlines() == lines
  # A different computation at the same path is refused, not mixed in.
  with pytest.raises(ValueError, match="different computation"):
    autontk.ntk_tiled(ntk, x1, x2 * 2, params, tile=(4, 2), out=out,
                      progress=False)
  autontk.ntk_tiled(ntk, x1, x2 * 2, params, tile=(4, 2), out=out,
                    progress=False, resume=False)


def test_torn_manifest_line_means_recompute(tmp_path):
  f, params, x1, _ = mlp_model()
  ntk = autontk.ntk_fn(f, implementation="jacobian_contraction")
  out = tmp_path / "run"
  full = np.array(autontk.ntk_tiled(ntk, x1, None, params, tile=3, out=out,
                                    progress=False))
  manifest = out / "manifest.jsonl"
  lines = manifest.read_text().splitlines()
  # Simulate a kill: the last tile's line is torn and its data scrambled.
  manifest.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:7])
  last = json.loads(lines[-1])["tile"]
  mm = np.load(out / "kernel_0.npy", mmap_mode="r+")
  mm[last[0] * 3:(last[0] + 1) * 3, last[1] * 3:(last[1] + 1) * 3] = np.nan
  mm.flush()
  del mm
  again = autontk.ntk_tiled(ntk, x1, None, params, tile=3, out=out,
                            progress=False)
  np.testing.assert_array_equal(again, full)


def _compiled_peak(ntk, plan, x1, x2, params):
  """The tile's program as ntk compiles it, its peak read by the cost model."""
  compiled = ntk.lower(plan, x1, x2, params, {}).compile()
  return hlo.read_memory_analysis(compiled.memory_analysis())


def test_auto_tile_respects_budget(tmp_path):
  """On CPU, XLA's peak_memory_in_bytes leaves out temporaries; the tile's
  compiled peak, read as the cost model reads it, must fit the budget."""
  f, params, x1, _ = mlp_model()
  x = jnp.concatenate([x1] * 6)  # N = 42
  ntk = autontk.ntk_fn(f, trace_axes=(), vmap_axes=0,
                       implementation="jacobian_contraction")
  plan = ntk.plan(x[:8], x[8:16], params)
  budget = int(_compiled_peak(ntk, plan, x[:8], x[8:16], params))
  out = tmp_path / "auto"
  got = autontk.ntk_tiled(ntk, x, None, params, tile="auto", out=out,
                          memory_budget=budget, progress=False)
  grid = json.loads((out / "meta.json").read_text())["grid"]
  t = grid["t1"]
  assert 1 <= t <= 8 < grid["n1"]  # the budget binds
  plans = storage.DiskStore(out, []).load_plans()
  assert set(plans) == {True, False}
  assert _compiled_peak(ntk, plans[False], x[:t], x[t:2 * t], params) <= budget
  assert _compiled_peak(ntk, plans[True], x[:t], None, params) <= budget
  assert _max_rel(got, ntk(x, None, params)) < RTOL
  small = autontk.ntk_tiled(ntk, x1, None, params, progress=False)
  assert _max_rel(small, ntk(x1, None, params)) < RTOL


def test_auto_tile_counts_temporaries_on_cpu():
  """The reason for the test above: on CPU, a tile's temporaries exceed what
  peak_memory_in_bytes reports, which a budget check must not miss."""
  if jax.default_backend() != "cpu":
    pytest.skip("XLA CPU's memory analysis only")
  f, params, x1, _ = mlp_model()
  ntk = autontk.ntk_fn(f, trace_axes=(), vmap_axes=0,
                       implementation="jacobian_contraction")
  plan = ntk.plan(x1, x1[::-1], params)
  analysis = ntk.lower(plan, x1, x1[::-1], params, {}).compile(
      ).memory_analysis()
  if not hasattr(analysis, "peak_memory_in_bytes"):
    pytest.skip("this jaxlib's memory analysis has no peak (jax 0.6)")
  assert hlo.read_memory_analysis(analysis) > analysis.peak_memory_in_bytes


def test_errors():
  f, params, x1, x2 = mlp_model()
  ntk = autontk.ntk_fn(f, implementation="jacobian_contraction")
  with pytest.raises(TypeError, match="`ntk`"):
    autontk.ntk_tiled(f, x1, None, params)
  with pytest.raises(ValueError, match="`rng`"):
    autontk.ntk_tiled(ntk, x1, None, params, rng=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="square"):
    autontk.ntk_tiled(ntk, x1, None, params, tile=(2, 3))
  with pytest.raises(ValueError, match="`tile`"):
    autontk.ntk_tiled(ntk, x1, None, params, tile="big")
  with pytest.raises(ValueError, match="`tile`"):
    autontk.ntk_tiled(ntk, x1, None, params, tile=0)
  diag = autontk.ntk_fn(f, diagonal_axes=(0,),
                        implementation="jacobian_contraction")
  with pytest.raises(ValueError, match="same batch size|diagonal axis"):
    autontk.ntk_tiled(diag, x1, x2, params, tile=2)
  with pytest.raises(ValueError, match="memory_budget"):
    autontk.ntk_tiled(ntk, x1, None, params, tile=2, memory_budget=16,
                      progress=False)
  with pytest.raises(MemoryError, match="memory_budget"):
    autontk.ntk_tiled(ntk, x1, None, params, tile="auto", memory_budget=16,
                      devices=[jax.devices()[0]], progress=False)
  g = lambda p, x: jnp.sum(x @ p["w"])  # noqa: E731 - no batch axis
  with pytest.raises(ValueError, match="axis 0"):
    autontk.ntk_tiled(autontk.ntk_fn(g, trace_axes=()), x1, None, params,
                      tile=2)


def test_resume_keeps_the_plans_it_started_with(tmp_path):
  f, params, x1, _ = mlp_model()
  first = autontk.ntk_fn(f, trace_axes=(),
                         implementation="jacobian_contraction")
  out = tmp_path / "run"
  full = np.array(autontk.ntk_tiled(first, x1, None, params, tile=3, out=out,
                                    progress=False))
  manifest = out / "manifest.jsonl"
  lines = manifest.read_text().splitlines()
  manifest.write_text("\n".join(lines[:2]) + "\n")  # as if killed early
  # The planner now answers differently; the resumed tiles still use the
  # recorded plans, so the kernel is bit-identical to the first run.
  other = autontk.ntk_fn(f, trace_axes=(), implementation="ntk_vector_products")
  again = autontk.ntk_tiled(other, x1, None, params, tile=3, out=out,
                            progress=False)
  np.testing.assert_array_equal(again, full)
  assert len(manifest.read_text().splitlines()) == len(lines)


def test_each_tile_shape_is_planned_by_the_ntk_planner():
  f, params, x1, _ = mlp_model()
  asked = []

  class Planner:
    def plan(self, ntk, a, b, p, kwargs):
      asked.append((a.shape, None if b is None else b.shape))
      return autontk.Plan(autontk.Implementation.JACOBIAN_CONTRACTION)

    def report(self, ntk, a, b, p, kwargs):
      raise NotImplementedError

  options = autontk.ntk_fn(f, implementation="auto").options
  ntk = autontk.NtkFn(f, options, planner=Planner())
  got = autontk.ntk_tiled(ntk, x1, None, params, tile=3, progress=False)
  # Diagonal tiles reuse x1 (x2=None); the others are 3 × 3 cross tiles,
  # ragged ones padded to the tile shape.
  assert set(asked) == {((3, 3), None), ((3, 3), (3, 3))}
  assert _max_rel(got, ntk(x1, None, params)) < RTOL


ZOO = ["scan_rnn", "flax_cnn"] + [
    pytest.param(n, marks=pytest.mark.slow)
    for n in ("attention", "tied_embedding", "equinox_mlp")]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_from_other_libraries(name):
  """Models written for the method tests (tests/models.py), unseen here."""
  import models
  case = getattr(models, name)()
  ntk = autontk.ntk_fn(case.f, vmap_axes=0,
                       implementation="jacobian_contraction")
  for x2 in (None, case.x2):
    got = autontk.ntk_tiled(ntk, case.x1, x2, case.params, tile=2,
                            progress=False, **case.kwargs)
    assert _max_rel(got, ntk(case.x1, x2, case.params, **case.kwargs)) < RTOL


def test_unbatched_input_leaf_and_traced_batch_on_disk(tmp_path):
  k = _keys(5, 3)
  params = jax.random.normal(k[0], (3, 2))

  def f(p, x):  # x["shift"] has no batch axis: every tile gets all of it
    return jnp.tanh((x["a"] + x["shift"]) @ p)

  x1 = {"a": jax.random.normal(k[1], (5, 3)), "shift": jnp.arange(3.0)}
  vmap_axes = ({"a": 0, "shift": None}, 0, {})
  ntk = autontk.ntk_fn(f, vmap_axes=vmap_axes,
                       implementation="jacobian_contraction")
  got = autontk.ntk_tiled(ntk, x1, None, params, tile=2, progress=False)
  assert _max_rel(got, ntk(x1, None, params)) < RTOL

  traced = autontk.ntk_fn(f, vmap_axes=vmap_axes, trace_axes=(0, 1),
                          implementation="jacobian_contraction")
  out = tmp_path / "traced"
  mean = autontk.ntk_tiled(traced, x1, None, params, tile=2, out=out,
                           progress=False)
  assert mean.shape == ()
  assert _max_rel(mean, traced(x1, None, params)) < RTOL
  per_example = np.load(out / "kernel_0.npy")  # the diagonal it averages
  assert per_example.shape == (5,)
  np.testing.assert_allclose(per_example.mean(), mean, rtol=RTOL)


def test_programs_are_reused_and_freed_with_their_ntk(monkeypatch):
  """A second call with the same NtkFn and tile compiles no new program;
  nothing is stored on the NtkFn, and the cache does not keep it alive."""
  from autontk.tiled import distributed
  built = []
  spmd_program = distributed.spmd_program

  def counting(body, cluster):
    built.append(body)
    return spmd_program(body, cluster)

  monkeypatch.setattr(distributed, "spmd_program", counting)
  f, params, x1, _ = mlp_model()
  # A traced batch axis: tiles run with an NtkFn derived from this one.
  ntk = autontk.ntk_fn(f, trace_axes=(0, -1),
                       implementation="jacobian_contraction")
  before = set(vars(ntk))
  first = autontk.ntk_tiled(ntk, x1, None, params, tile=3, progress=False)
  assert len(built) == 1  # one kind of tile: diagonal, x2 = x1
  again = autontk.ntk_tiled(ntk, x1, None, params, tile=3, progress=False)
  assert len(built) == 1
  np.testing.assert_array_equal(again, first)
  assert set(vars(ntk)) == before
  ref = weakref.ref(ntk)
  del ntk, built[:]
  gc.collect()
  assert ref() is None
