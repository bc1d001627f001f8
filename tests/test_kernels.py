"""Kernel options against the independent reference: ``wrt`` (parameter
subsets), ``groups`` (per-group kernels), the pseudo-NTK, model objects
(flax linen and nnx, haiku, equinox) and ``precision``; through every
method, auto, chunked plans, the plan cache, the cost report, tiled, the CLI
factory contract, ``tune``, ``nngp_fn`` and ``ntk_vp_fn``.

A subset kernel must equal the reference computed on the selected leaves
only; each group's kernel the reference restricted to the group, and the
groups must sum to the subset's kernel; the pseudo-NTK the reference kernel
of the summed logits.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autontk
from autontk import BatchChunking, Implementation, Plan
from helpers import assert_kernels_close
from kernel_models import (CASES, float_leaf, layer_of, mlp_case, paths,
                           rand, reference_kernels, summed_logits)
import test_unseen_models

SD = Implementation.STRUCTURED_DERIVATIVES
VP = Implementation.NTK_VECTOR_PRODUCTS
JC = Implementation.JACOBIAN_CONTRACTION

# How each run computes: (implementation, vmap_axes, plan or None).
RUNS = {
    "jacobian_contraction": ("jacobian_contraction", None, None),
    "ntk_vector_products": ("ntk_vector_products", 0, None),
    "structured_derivatives": ("structured_derivatives", 0, None),
    "auto": ("auto", 0, None),
    "chunked_scan": ("auto", 0, Plan(SD, chunking=BatchChunking(2, "scan"))),
    "chunked_host": ("auto", 0, Plan(VP, chunking=BatchChunking(2, "host"))),
}
# The fast sweep: every run on the plain model; one per library model (the
# rest with -m slow).
FAST = {"mlp": tuple(RUNS), "linen": ("structured_derivatives",),
        "nnx": ("chunked_scan",), "haiku": ("jacobian_contraction",),
        "equinox": ("ntk_vector_products",)}
FAST_PSEUDO = {"mlp": ("structured_derivatives", "ntk_vector_products"),
               "linen": ("auto",), "equinox": ("chunked_scan",)}


def _params(names, fast=FAST):
  out = []
  for case in names:
    for run in RUNS:
      marks = () if run in fast.get(case, ()) else (pytest.mark.slow,)
      out.append(pytest.param(case, run, marks=marks, id=f"{case}-{run}"))
  return out


def _kernel(f, run, x1, x2, params, kwargs=None, **options):
  impl, vmap_axes, plan = RUNS[run]
  ntk = autontk.ntk_fn(f, implementation=impl, vmap_axes=vmap_axes,
                       plan_cache=False, **options)
  if plan is not None:
    return ntk.execute(plan, x1, x2, params, **(kwargs or {}))
  return ntk(x1, x2, params, **(kwargs or {}))


@functools.lru_cache(maxsize=None)
def _case(name):
  return CASES[name]()


@functools.lru_cache(maxsize=None)
def _group_references(name):
  """(groups, their references, the whole selection's reference)."""
  c = _case(name)
  sel = _selected(c)
  names = paths(c.params)
  groups = sorted({layer_of(names[i]) for i in sel})
  picks = [[i for i in sel if layer_of(names[i]) == g] for g in groups]
  refs = reference_kernels(c.apply, c.params, c.x1, c.x2, picks + [sel])
  return groups, refs[:-1], refs[-1]


def _selected(case):
  leaves = jax.tree.leaves(case.params)
  return [i for i, (p, v) in enumerate(zip(paths(case.params), leaves))
          if case.picked(p) and float_leaf(v)]


@pytest.mark.parametrize("case,run", _params(CASES))
def test_subset_groups_against_the_reference(case, run):
  """wrt + groups="layer": each group equals the reference restricted to
  it, and the groups sum to the reference of the whole selection."""
  c = _case(case)
  groups, refs, whole = _group_references(case)
  k = _kernel(c.f, run, c.x1, c.x2, c.params, wrt=c.wrt, groups="layer")
  assert sorted(k) == groups
  for g, ref in zip(groups, refs):
    assert_kernels_close(k[g], ref)
  assert_kernels_close(jax.tree.map(lambda *a: sum(a), *k.values()), whole)


@pytest.mark.parametrize("case,run", _params(
    ["mlp"], {"mlp": ("structured_derivatives", "chunked_host")}))
def test_subset_kernel_against_the_reference(case, run):
  c = CASES[case]()
  (ref,) = reference_kernels(c.apply, c.params, c.x1, c.x2, [_selected(c)],
                             trace_axes=())
  k = _kernel(c.f, run, c.x1, c.x2, c.params, wrt=c.wrt, trace_axes=())
  assert_kernels_close(k, ref)


@pytest.mark.parametrize("case,run", _params(["mlp", "linen", "equinox"],
                                             FAST_PSEUDO))
def test_pseudo_ntk_against_the_reference(case, run):
  c = _case(case)
  k = _kernel(c.f, run, c.x1, None, c.params, pseudo_axes=(-1,))
  assert_kernels_close(k, _pseudo_reference(case))
  assert k.shape == (3, 3)


@functools.lru_cache(maxsize=None)
def _pseudo_reference(name):
  c = _case(name)
  leaves = jax.tree.leaves(c.params)
  every = [i for i, v in enumerate(leaves) if float_leaf(v)]
  return reference_kernels(summed_logits(c.apply), c.params, c.x1, None,
                           [every])[0]


def test_pseudo_ntk_is_the_mean_of_the_full_kernel_over_logit_pairs():
  c = mlp_case()
  full = autontk.ntk_fn(c.f, trace_axes=())(c.x1, c.x2, c.params)
  pntk = autontk.pntk_fn(c.f)(c.x1, c.x2, c.params)
  np.testing.assert_allclose(pntk, full.sum((2, 3)) / 3, rtol=1e-5,
                             atol=1e-6)


# Every axes option, on a rank-3 output (N, T, O) --------------------------------

AXES = {"trace_last": ((-1,), (), True), "full": ((), (), True),
        "diag_last": ((), (-1,), True), "diag_batch": ((-1,), (0,), False),
        "trace_batch": ((0, -1), (), False), "trace_t_diag_o": ((1,), (2,),
                                                               True)}


def _sequence_model():
  params = {"emb": {"w": rand(30, (2, 4))}, "head": {"w": rand(31, (4, 3)),
                                                     "b": rand(32, (3,))}}

  def f(p, x):
    return jnp.sin(x @ p["emb"]["w"]) @ p["head"]["w"] + p["head"]["b"]

  return f, params, rand(33, (3, 2, 2)), rand(34, (2, 2, 2))


FAST_AXES = {("structured_derivatives", "full"),
             ("structured_derivatives", "trace_t_diag_o"),
             ("structured_derivatives", "trace_batch"),
             ("ntk_vector_products", "diag_batch"),
             ("jacobian_contraction", "diag_last"),
             ("chunked_scan", "diag_batch")}


@pytest.mark.parametrize("run,axes", [
    pytest.param(run, axes, id=f"{run}-{axes}",
                 marks=() if (run, axes) in FAST_AXES else pytest.mark.slow)
    for run in ("jacobian_contraction", "ntk_vector_products",
                "structured_derivatives", "chunked_scan", "chunked_host")
    for axes in AXES])
def test_every_axes_option_grouped_and_pseudo(run, axes):
  trace, diag, use_x2 = AXES[axes]
  f, params, x1, x2 = _sequence_model()
  x2 = x2 if use_x2 else None
  refs = reference_kernels(f, params, x1, x2, [[0], [1, 2], [0, 1, 2]],
                           trace, diag)
  k = _kernel(f, run, x1, x2, params, trace_axes=trace, diagonal_axes=diag,
              groups="top")
  assert sorted(k) == ["emb", "head"]
  assert_kernels_close(k["emb"], refs[0])
  assert_kernels_close(k["head"], refs[1])
  k = _kernel(f, run, x1, x2, params, trace_axes=trace, diagonal_axes=diag,
              pseudo_axes=-1, wrt="head")
  (ref,) = reference_kernels(summed_logits(f), params, x1, x2, [[1, 2]],
                             trace, diag)
  assert_kernels_close(k, ref)


def test_pytree_outputs_give_a_pytree_per_group():
  def f(p, x):
    h = jnp.tanh(x @ p["a"])
    return {"y": h @ p["b"], "z": (h ** 2) @ p["c"]}

  params = {"a": rand(40, (3, 4)), "b": rand(41, (4, 2)),
            "c": rand(42, (4, 1))}
  x1, x2 = rand(43, (2, 3)), rand(44, (3, 3))
  refs = reference_kernels(f, params, x1, x2, [[0], [1], [2]])
  for run in ("structured_derivatives", "chunked_scan"):
    k = _kernel(f, run, x1, x2, params, groups=lambda path: path)
    for name, ref in zip("abc", refs):
      assert_kernels_close(k[name], ref)


# Model objects ------------------------------------------------------------------

@pytest.mark.compat
@pytest.mark.parametrize("case", ["nnx", "equinox"])
def test_model_objects_are_taken_as_they_are(case):
  c = CASES[case]()
  every = [i for i, v in enumerate(jax.tree.leaves(c.params))
           if float_leaf(v)]
  (ref,) = reference_kernels(c.apply, c.params, c.x1, c.x2, [every])
  assert_kernels_close(autontk.ntk_fn(c.f)(c.x1, c.x2, c.params), ref)
  (ref,) = reference_kernels(c.apply, c.params, c.x1, None, [every],
                             trace_axes=(), diagonal_axes=())
  nngp = autontk.nngp_fn(c.f, trace_axes=())(c.x1, None, c.params)
  assert nngp.shape == ref.shape


@pytest.mark.compat
def test_adapters_unpack_and_plain_linen_module():
  nn = pytest.importorskip("flax.linen")
  net = nn.Dense(2)
  x = rand(50, (3, 4))
  variables = net.init(jax.random.PRNGKey(0), x)
  f, params = autontk.adapters.linen(net, variables)
  k1 = autontk.ntk_fn(net)(x, None, variables["params"])
  k2 = autontk.ntk_fn(f)(x, None, params)
  (ref,) = reference_kernels(lambda p, xx: net.apply({"params": p}, xx),
                             params, x, None, [[0, 1]])
  assert_kernels_close(k1, ref)
  assert_kernels_close(k2, ref)


@pytest.mark.compat
def test_haiku_without_state_and_rng():
  hk = pytest.importorskip("haiku")
  t = hk.transform(lambda x: hk.nets.MLP([4, 2])(x))
  x = rand(51, (3, 3))
  params = t.init(jax.random.PRNGKey(0), x)
  k = autontk.ntk_fn(t, groups="layer")(x, None, params,
                                        rng=jax.random.PRNGKey(1))
  assert sorted(k) == ["mlp/~/linear_0", "mlp/~/linear_1"]
  with pytest.raises(ValueError, match="state"):
    autontk.ntk_fn(hk.transform_with_state(lambda x: hk.Linear(2)(x)))


# Errors -------------------------------------------------------------------------

def _mlp_call(**options):
  c = mlp_case()
  return autontk.ntk_fn(c.f, **options)(c.x1, None, c.params)


@pytest.mark.parametrize("options,error,match", [
    (dict(wrt="head/*"), ValueError, r"`wrt` pattern\(s\) \['head/\*'\]"),
    (dict(wrt=["0/w", "9"]), ValueError, r"`wrt` pattern\(s\) \['9'\]"),
    (dict(wrt={"head": True}), ValueError, "`wrt` must be a pytree of "
     "booleans that is a prefix of params"),
    (dict(wrt=[True, False]), ValueError, "prefix of params"),
    (dict(wrt=[1, 0, 0]), TypeError, "`wrt` must be a path pattern"),
    (dict(wrt=lambda path, leaf: leaf.ndim), TypeError,
     "`wrt` returned int"),
    (dict(wrt=lambda path, leaf: False), ValueError, "`wrt` selects no leaf"),
    (dict(wrt=False), ValueError, "`wrt` selects no leaf"),
    (dict(groups="layers"), ValueError, "`groups` must be a callable"),
    (dict(groups=lambda path: 1), TypeError, "`groups` returned 1"),
    (dict(pseudo_axes=()), ValueError, "`pseudo_axes` must name"),
    (dict(pseudo_axes=5), ValueError, r"`pseudo_axes` \(5,\) is out of range"),
    (dict(precision="fp8"), ValueError, "`precision` must be None or one of"),
])
def test_bad_options_raise_errors_naming_them(options, error, match):
  with pytest.raises(error, match=match):
    _mlp_call(**options)


def test_selecting_only_integer_leaves_is_an_error():
  f = lambda p, x: x @ p["w"] * p["n"]
  params = {"w": jnp.ones((3, 2)), "n": jnp.int32(2)}
  with pytest.raises(ValueError, match="only non-floating-point leaves "
                     r"\('n'\)"):
    autontk.ntk_fn(f, wrt="n")(jnp.ones((2, 3)), None, params)


# Planning, caching and reporting ------------------------------------------------

def _deep_mlp(depth=6, width=64, n=8):
  params = [{"w": rand(60 + i, (width, width), width ** -0.5),
             "b": jnp.zeros(width)} for i in range(depth)]

  def f(p, x):
    for layer in p[:-1]:
      x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ p[-1]["w"] + p[-1]["b"]

  return f, params, rand(59, (n, width))


def test_a_last_layer_kernel_costs_what_the_last_layer_costs():
  """The planner lowers the real (smaller) program: its FLOPs shrink."""
  f, params, x = _deep_mlp()
  flops = {}
  for wrt in (None, str(len(params) - 1)):
    ntk = autontk.ntk_fn(f, implementation="jacobian_contraction",
                         trace_axes=(), plan_cache=False, wrt=wrt)
    report = ntk.report(x, None, params)
    flops[wrt] = report.chosen_estimate.features.flops
    if wrt is not None:
      assert "4160 params of 24960 (wrt 2 leaves)" in report.call
  assert flops["5"] < 0.35 * flops[None]


def test_grouped_vector_products_cost_one_pass_per_group():
  """Grouped NTK-vector products run one restricted pass per group: the
  grouped program costs what the groups' own kernels cost together."""
  f, params, x = _deep_mlp(depth=3, width=16, n=4)

  def flops(**opts):
    ntk = autontk.ntk_fn(f, implementation="ntk_vector_products",
                         plan_cache=False, **opts)
    return ntk.report(x, None, params).chosen_estimate.features.flops

  grouped = flops(groups="top")
  alone = [flops(wrt=str(g)) for g in range(3)]
  assert grouped == pytest.approx(sum(alone), rel=0.1)
  assert grouped > 1.05 * flops()


def test_selections_key_the_plan_cache(tmp_path):
  """Different selections never share a cached plan; the same leaves chosen
  two ways do."""
  cache = autontk.PlanCache(tmp_path)
  f, params, x = _deep_mlp(depth=3, width=8, n=4)
  sig = {}
  for name, opts in {"all": {}, "last": dict(wrt="2"),
                     "last_callable": dict(wrt=lambda p, v: p[0] == "2"),
                     "first": dict(wrt="0"), "grouped": dict(groups="top"),
                     "pseudo": dict(pseudo_axes=-1),
                     "highest": dict(precision="highest")}.items():
    ntk = autontk.ntk_fn(f, plan_cache=cache, vmap_axes=0, **opts)
    if name in ("last", "last_callable", "first"):
      ntk(x, None, params)
    sig[name] = autontk.plancache.model_signature(ntk, x, None, params)
  digests = {k: s.digest for k, s in sig.items()}
  assert digests["last"] == digests["last_callable"]
  assert len(set(digests.values())) == len(digests) - 1
  assert sig["grouped"].parts["selection"]["groups"] == ["0", "1", "2"]
  assert sig["highest"].parts["precision"] == "highest"
  assert "selection" not in sig["all"].parts
  # Two entries: "last" planned once, reused by "last_callable".
  assert {e["signature"] for e in cache.entries()} == {
      digests["last"], digests["first"]}


def test_report_names_selection_groups_pseudo_and_precision():
  f, params, x = _deep_mlp(depth=2, width=4, n=2)
  ntk = autontk.ntk_fn(f, wrt="1", groups=lambda p: p, pseudo_axes=-1,
                       precision="highest", plan_cache=False)
  report = ntk.report(x, None, params)
  assert ("20 params of 40 (wrt 2 leaves); 2 groups; pseudo-NTK over "
          "output axes (-1,); precision highest") in report.call
  assert json.loads(report.to_json())["call"] == report.call
  assert "precision=highest" in repr(ntk)


@pytest.mark.parametrize("precision", ["highest", "default"])
def test_precision_reaches_every_contraction(precision):
  f, params, x = _deep_mlp(depth=2, width=4, n=2)
  for impl in (JC, VP, SD):
    ntk = autontk.ntk_fn(f, implementation=impl, precision=precision)
    text = ntk.lower(Plan(impl), x, None, params, {}).as_text()
    dots = text.count("stablehlo.dot_general")
    assert dots > 0
    want = f"precision = [{precision.upper()}, {precision.upper()}]"
    assert text.count(want) == dots, impl


def test_tune_and_the_cli_contract_pass_the_options_through(tmp_path):
  f, params, x = _deep_mlp(depth=2, width=4, n=4)
  r = autontk.tune(f, x, None, params, wrt="1", groups="top", vmap_axes=0,
                   cache=autontk.PlanCache(tmp_path), progress=False,
                   max_trials=2, budget_s=30)
  assert r.signature.parts["selection"]["groups"] == ["1"]
  from autontk.cli import models
  model = models.build_model(lambda: {"f": f, "params": params, "x1": x,
                                      "wrt": "1", "precision": "highest"},
                             {}, "factory")
  options = models.ntk_options(model)
  assert options == {"wrt": "1", "precision": "highest"}


def test_ntk_vp_fn_takes_wrt():
  c = mlp_case()
  sel = _selected(c)
  (ref,) = reference_kernels(c.apply, c.params, c.x1, c.x2, [sel],
                             trace_axes=())
  vp = autontk.ntk_vp_fn(c.f, c.x1, c.x2, c.params, wrt=c.wrt,
                         precision="highest")
  v = rand(70, (4, 3))
  np.testing.assert_allclose(vp(v), np.einsum("ijab,jb->ia", ref, v),
                             rtol=1e-4, atol=1e-5)


def test_tiled_takes_wrt_and_pseudo():
  c = mlp_case()
  sel = _selected(c)
  (ref,) = reference_kernels(c.apply, c.params, c.x1, c.x2, [sel])
  ntk = autontk.ntk_fn(c.f, vmap_axes=0, wrt=c.wrt, plan_cache=False)
  k = autontk.ntk_tiled(ntk, c.x1, c.x2, c.params, tile=2, progress=False)
  assert_kernels_close(k, ref)
  every = list(range(6))
  (ref,) = reference_kernels(summed_logits(c.apply), c.params, c.x1, None,
                             [every])
  ntk = autontk.pntk_fn(c.f, vmap_axes=0, plan_cache=False)
  assert_kernels_close(autontk.ntk_tiled(ntk, c.x1, None, c.params, tile=2,
                                         progress=False), ref)


def test_tiled_writes_one_kernel_per_group(tmp_path):
  c = mlp_case()
  ntk = autontk.ntk_fn(c.f, vmap_axes=0, groups="top", plan_cache=False)
  k = autontk.ntk_tiled(ntk, c.x1, c.x2, c.params, tile=2, progress=False,
                        out=tmp_path / "run")
  refs = reference_kernels(c.apply, c.params, c.x1, c.x2,
                           [[0, 1], [2, 3], [4, 5]])
  assert sorted(k) == ["0", "1", "2"]
  for g, ref in zip("012", refs):
    assert_kernels_close(k[g], ref)
  assert sorted(p.name for p in (tmp_path / "run").glob("kernel_*.npy")) == [
      "kernel_0.npy", "kernel_1.npy", "kernel_2.npy"]
  # Resumed from disk, in memory, with x2 = x1: the same kernels.
  again = autontk.ntk_tiled(ntk, c.x1, c.x2, c.params, tile=2,
                            progress=False, out=tmp_path / "run")
  for g in "012":
    np.testing.assert_array_equal(np.asarray(again[g]), np.asarray(k[g]))
  sym = autontk.ntk_tiled(ntk, c.x1, None, c.params, tile=2, progress=False)
  whole = ntk(c.x1, None, c.params)
  for g in "012":
    assert_kernels_close(sym[g], whole[g])


def test_tiled_traced_batch_axis_with_wrt(tmp_path):
  """A traced batch axis (averaged at the end) and a ``wrt`` subset."""
  c = mlp_case()
  ntk = autontk.ntk_fn(c.f, vmap_axes=0, trace_axes=(0, -1), wrt=c.wrt,
                       plan_cache=False)
  k = autontk.ntk_tiled(ntk, c.x1, None, c.params, tile=2, progress=False,
                        out=tmp_path / "run")
  np.testing.assert_allclose(np.asarray(k), np.asarray(ntk(c.x1, None,
                                                           c.params)),
                             rtol=1e-5, atol=1e-6)


# The unseen-models sweep --------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(test_unseen_models.MODELS))
def test_unseen_models_subset_groups_and_pseudo(name):
  """Every model of the unseen-models sweep, every method, auto and a
  chunked plan: half the float leaves in two groups against the reference,
  and the pseudo-NTK of the summed last axis where every output leaf has
  one besides the batch axis."""
  from helpers import split_kwargs_by_hand
  unseen = test_unseen_models
  m = unseen._built(name)  # noqa: SLF001
  leaves = jax.tree.leaves(m.params)
  names = paths(m.params)
  floats = [i for i, v in enumerate(leaves)
            if float_leaf(v) or isinstance(v, float)]
  sel = floats[::2] if len(floats) >= 4 else floats
  group = {names[i]: f"g{k % 2}" for k, i in enumerate(sel)}
  picks = [sel[0::2], sel[1::2], sel]
  groups = ("g0", "g1") if len(sel) > 1 else ("g0",)
  # The pseudo-NTK sums the last axis: where it is not the batch axis.
  problem = autontk.ntk_fn(m.f, vmap_axes=m.vmap_axes).problem(
      m.x1, None, m.params, **m.kwargs)
  batch = (problem.vmap.out_axes if problem.vmap is not None else
           [0] * len(problem.out1))
  pseudo = all(len(o.shape) >= 2 and b != len(o.shape) - 1
               for o, b in zip(problem.out1, batch))
  failures = []
  k = sorted(unseen.MODELS).index(name)
  for impl in unseen.IMPLS + ["chunked"]:
    for trace, diag, use_x2, vmap in unseen._runs(  # noqa: SLF001
        m, "auto" if impl == "chunked" else impl, False, k)[:1]:
      if impl == "chunked" and m.vmap_axes is None:
        continue
      x2 = m.x2 if use_x2 else None
      kw1, kw2 = split_kwargs_by_hand(m.kwargs, m.x1, x2)
      try:
        refs = reference_kernels(m.f, m.params, m.x1, x2, picks, trace, diag,
                                 kw1, kw2)
        got = _sweep_kernel(m, impl, trace, diag, x2, vmap,
                            wrt=lambda p, v: p in group,
                            groups=lambda p: group[p])
        assert sorted(got) == list(groups)
        for g, ref in zip(groups, refs):
          assert_kernels_close(got[g], ref)
        if pseudo:
          (ref,) = reference_kernels(summed_logits(m.f), m.params, m.x1, x2,
                                     [floats], trace, diag, kw1, kw2)
          assert_kernels_close(
              _sweep_kernel(m, impl, trace, diag, x2, vmap, pseudo_axes=-1),
              ref)
      except Exception as e:  # noqa: BLE001 - collected and reported below
        failures.append(f"{impl} trace_axes={trace} diagonal_axes={diag} "
                        f"vmap_axes={vmap} x2={use_x2}: "
                        f"{type(e).__name__}: {e}")
  assert not failures, f"{name}:\n" + "\n".join(failures)


def _sweep_kernel(m, impl, trace, diag, x2, vmap, **options):
  import warnings
  chunked = impl == "chunked"
  ntk = autontk.ntk_fn(m.f, trace_axes=trace, diagonal_axes=diag,
                       vmap_axes=m.vmap_axes if chunked else vmap,
                       implementation="auto" if chunked else impl,
                       plan_cache=False, **options)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    if chunked:
      reason = autontk.chunking.unsupported_reason(
          ntk.problem(m.x1, x2, m.params, **m.kwargs))
      plan = Plan(JC, chunking=None if reason else BatchChunking(2, "scan"))
      return ntk.execute(plan, m.x1, x2, m.params, **m.kwargs)
    return ntk(m.x1, x2, m.params, **m.kwargs)
