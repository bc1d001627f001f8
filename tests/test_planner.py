"""The "auto" planner: choice, memoisation, memory budget, reports."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autontk
from autontk import methods
from autontk._options import Implementation
from autontk.costmodel import device
from autontk.costmodel.device import DeviceConstants
from autontk.costmodel.predict import RooflinePredictor
from autontk.auto.planner import Planner, PlannerOptions, PlanningCall
from autontk.auto.report import CostReport
from autontk.costmodel import hlo
from autontk.costmodel.features import CostFeatures
import helpers
from reference import reference_ntk

CONSTANTS = DeviceConstants(1e11, 1e10, 5e-6, 1e-7, "cpu", "cpu")
ROOFLINE = RooflinePredictor(CONSTANTS)


@pytest.fixture(autouse=True, scope="module")
def _cache_dir(tmp_path_factory):
  mp = pytest.MonkeyPatch()
  mp.setenv("AUTONTK_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
  device._reset_memo()
  yield
  mp.undo()
  device._reset_memo()


def _mlp(widths=(8, 64, 64, 1), seed=0):
  params = [helpers.rand(seed * 100 + i, (a, b), 1 / np.sqrt(a))
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))]

  def f(p, x):
    for w in p[:-1]:
      x = jnp.tanh(x @ w)
    return x @ p[-1]

  return f, params


F, PARAMS = _mlp()
X = helpers.rand(1, (6, 8))


def _close(a, b, rtol=2e-4):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-5 * np.abs(b).max())


@pytest.fixture(scope="module")
def auto_ntk():
  return autontk.ntk_fn(F, vmap_axes=0, predictor=ROOFLINE, block_sizes=(4,))


def test_auto_equals_reference_and_is_memoised(auto_ntk):
  k = auto_ntk(X, None, PARAMS)
  _close(k, reference_ntk(F, PARAMS, X, None))
  planner = auto_ntk.planner.cost_model
  calls = []
  original = planner.plan_call
  planner.plan_call = lambda *a, **kw: calls.append(1) or original(*a, **kw)
  try:
    plan = auto_ntk.plan(X + 1.0, None, PARAMS)  # same signature
    auto_ntk(X * 2.0, None, PARAMS)
  finally:
    del planner.plan_call
  assert calls == []
  assert plan.implementation in methods.available()
  assert plan.chunking is None


def test_new_signature_plans_again(auto_ntk):
  x2 = jax.random.normal(jax.random.PRNGKey(2), (3, 8))
  plan = auto_ntk.plan(X, x2, PARAMS)
  _close(auto_ntk(X, x2, PARAMS), reference_ntk(F, PARAMS, X, x2))
  assert plan.implementation in methods.available()


def test_report_lists_every_candidate(auto_ntk, tmp_path):
  report = auto_ntk.report(X, None, PARAMS)
  impls = {e.plan.implementation for e in report.estimates}
  assert impls == set(methods.available())
  assert sum(e.plan == report.chosen for e in report.estimates) == 1
  assert report.chosen == auto_ntk.plan(X, None, PARAMS)
  assert any(e.plan.chunking is not None for e in report.estimates)
  assert all(e.estimated or e.reason for e in report.estimates)
  chosen = report.chosen_estimate
  assert chosen.feasible and chosen.compile_time is not None
  assert chosen.peak_memory_exact and chosen.flops > 0
  assert report.planning_time > 0
  text = str(report)
  for m in methods.available():
    assert m.name.lower() in text
  assert "memory budget" in text and "*" in text
  back = CostReport.from_json(report.to_json())
  assert back == report
  json.loads(report.to_json())
  measured = report.with_measurements({report.chosen: 0.01})
  assert measured.chosen_estimate.measured_time == 0.01
  pytest.importorskip("matplotlib")
  path = tmp_path / "report.png"
  measured.plot(str(path))
  assert path.stat().st_size > 1000


def _plan_report(ntk, x, params):
  """The planner's own (not full) report: what planning estimated."""
  return ntk.planner.cost_model.plan_call(
      PlanningCall(ntk, x, None, params, {}))


def test_tiny_budget_forces_a_chunked_plan_under_budget():
  f, params = _mlp((8, 128, 128, 2), seed=3)
  x = jax.random.normal(jax.random.PRNGKey(4), (16, 8))
  jc = (Implementation.JACOBIAN_CONTRACTION,)
  kw = dict(vmap_axes=0, trace_axes=(), methods=jc, predictor=ROOFLINE,
            block_sizes=(4,))
  roomy = autontk.ntk_fn(f, **kw)
  whole = _plan_report(roomy, x, params).chosen_estimate
  assert whole.plan.chunking is None and whole.peak_memory_exact
  budget = int(whole.peak_memory * 0.5)
  tight = autontk.ntk_fn(f, memory_budget=budget, **kw)
  report = _plan_report(tight, x, params)
  unchunked = [e for e in report.estimates if e.plan.chunking is None][0]
  assert not unchunked.feasible and "exceeds the budget" in unchunked.reason
  chosen = report.chosen_estimate
  assert report.chosen.chunking is not None
  assert chosen.feasible and chosen.peak_memory_exact
  assert chosen.peak_memory <= budget
  _close(tight(x, None, params), reference_ntk(f, params, x, None, ()))


def test_pluggable_predictor_decides():
  class PreferVectorProducts:
    def predict(self, features):
      return 1e-3 if features.method == "ntk_vector_products" else 1.0

  ntk = autontk.ntk_fn(F, vmap_axes=0, predictor=PreferVectorProducts(),
                       chunking=False)
  plan = ntk.plan(X, None, PARAMS)
  assert plan == autontk.Plan(Implementation.NTK_VECTOR_PRODUCTS)


def test_without_vmap_axes_no_chunked_candidates():
  ntk = autontk.ntk_fn(F, predictor=ROOFLINE)
  planner = ntk.planner.cost_model
  cands = planner.candidates(PlanningCall(ntk, X, None, PARAMS, {}))
  assert cands and all(c.chunking is None for c in cands)
  _close(ntk(X, None, PARAMS), reference_ntk(F, PARAMS, X, None))


def test_auto_under_outer_jit(auto_ntk):
  k = jax.jit(lambda x, p: auto_ntk(x, None, p))(X, PARAMS)
  _close(k, reference_ntk(F, PARAMS, X, None))


def test_unknown_and_bad_options_raise():
  with pytest.raises(TypeError, match="memory_budgt"):
    autontk.ntk_fn(F, memory_budgt=0.5)
  with pytest.raises(ValueError, match="memory_budget"):
    autontk.ntk_fn(F, memory_budget=-3)
  with pytest.raises(ValueError, match="shortlist"):
    autontk.ntk_fn(F, shortlist=0)
  with pytest.raises(ValueError, match="schemes"):
    autontk.ntk_fn(F, schemes=("threads",))
  with pytest.raises(TypeError, match="predictor"):
    autontk.ntk_fn(F, predictor=object())


def test_options_and_candidates_are_stable_values():
  opts = PlannerOptions.make(methods=("jacobian_contraction", 2),
                             block_sizes=[4, 2])
  assert opts.methods == (Implementation.JACOBIAN_CONTRACTION,
                          Implementation.NTK_VECTOR_PRODUCTS)
  assert opts.block_sizes == (4, 2)
  assert hash(opts) == hash(PlannerOptions.make(
      methods=("jacobian_contraction", 2), block_sizes=(4, 2)))
  planner = Planner(opts)
  ntk = autontk.ntk_fn(F, vmap_axes=0)
  plans = planner.candidates(PlanningCall(ntk, X, None, PARAMS, {}))
  assert len(plans) == len(set(plans)) == 2 + 2 * 2 * 2
  for p in plans:
    assert autontk.Plan.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_without_vmap_axes_column_chunks_save_memory():
  f, params = _mlp((8, 128, 128, 4), seed=3)
  x = jax.random.normal(jax.random.PRNGKey(4), (16, 8))
  kw = dict(trace_axes=(), methods=(Implementation.NTK_VECTOR_PRODUCTS,),
            predictor=ROOFLINE)
  whole = autontk.ntk_fn(f, **kw).report(x, None, params).estimates[0]
  assert whole.plan == autontk.Plan(Implementation.NTK_VECTOR_PRODUCTS)
  ntk = autontk.ntk_fn(f, memory_budget=int(whole.peak_memory * 0.5), **kw)
  report = ntk.report(x, None, params)
  chosen = report.chosen_estimate
  assert chosen.plan.config.column_chunk is not None
  assert chosen.features.loop_iterations > 1
  assert chosen.flops == pytest.approx(whole.flops, rel=0.1)
  assert chosen.peak_memory_exact and chosen.peak_memory <= 0.5 * whole.peak_memory
  _close(ntk(x, None, params), reference_ntk(f, params, x, None, ()))


def test_auto_without_jit():
  ntk = autontk.ntk_fn(F, vmap_axes=0, jit=False, predictor=ROOFLINE,
                       chunking=False)
  _close(ntk(X, None, PARAMS), reference_ntk(F, PARAMS, X, None))


def test_backend_without_lowered_analysis_compiles_to_rank(monkeypatch):
  """CUDA analyses compiled programs only: the planner compiles to rank."""
  import dataclasses as dc
  original = hlo.analyse_lowered

  def no_counts(lowered):
    return dc.replace(original(lowered), flops=None,
                      bytes_accessed=None, transcendentals=None)

  monkeypatch.setattr(hlo, "analyse_lowered", no_counts)
  ntk = autontk.ntk_fn(F, vmap_axes=0, predictor=ROOFLINE, chunking=False)
  report = ntk.report(X, None, PARAMS)
  assert all(e.compile_time is not None and e.flops for e in report.estimates)
  _close(ntk(X, None, PARAMS), reference_ntk(F, PARAMS, X, None))


def test_custom_call_matmuls_do_not_hide_flops():
  """GPU matmuls may report -1 FLOPs; the lowered text's count is a floor."""
  lowered = CostFeatures(flops=1e6, bytes_accessed=1e3, transcendentals=0.0,
                         contraction_flops=9e5)
  compiled = CostFeatures(bytes_accessed=5e2, peak_memory=4e3,
                          peak_memory_exact=True)
  merged = hlo.merge_compiled(lowered, compiled)
  assert merged.flops == 1e6 and merged.bytes_accessed == 5e2
  assert merged.peak_memory_exact
  compiled = dataclasses.replace(compiled, flops=1e3)
  floor = 9e5 if jax.default_backend() != "cpu" else 1e3  # CPU: exact
  assert hlo.merge_compiled(lowered, compiled).flops == floor


class _ConstantPredictor:
  """Predicts the same time for every candidate: every pair is a close call."""

  def __init__(self, seconds):
    self.seconds = seconds

  def predict(self, features):
    return self.seconds


@pytest.mark.parametrize("seconds,payback,compiled", [
    (1e-7, 100, 1),   # 100 calls take 10 µs: a second compile never pays
    (1e-7, 0, 2),     # payback_calls=0: always settle close calls
    (10.0, 100, 2),   # a 10 s kernel: the second compile pays at once
])
def test_runner_up_compiled_only_when_it_pays_back(seconds, payback,
                                                   compiled):
  ntk = autontk.ntk_fn(F, vmap_axes=0, chunking=False,
                       predictor=_ConstantPredictor(seconds),
                       payback_calls=payback)
  report = _plan_report(ntk, X, PARAMS)
  assert sum(e.compile_time is not None for e in report.estimates) == compiled
  assert report.chosen_estimate.compile_time is not None


class _CompileRevealsCost:
  """Jacobian contraction looks cheapest lowered; its compiled program
  (exact memory) shows a large cost the lowered one hid."""

  def predict(self, features):
    if features.method == "jacobian_contraction":
      return 1.0 if features.peak_memory_exact else 1e-7
    return {"structured_derivatives": 2e-7}.get(features.method, 3e-7)


def test_runner_up_below_the_compiled_leader_is_compiled():
  """A runner-up predicted faster than what the leader's compile showed is
  compiled and chosen, however short the kernels (no payback needed)."""
  ntk = autontk.ntk_fn(F, vmap_axes=0, chunking=False,
                       predictor=_CompileRevealsCost(), payback_calls=100)
  report = _plan_report(ntk, X, PARAMS)
  compiled = {e.plan.implementation for e in report.estimates
              if e.compile_time is not None}
  assert compiled == {Implementation.JACOBIAN_CONTRACTION,
                      Implementation.STRUCTURED_DERIVATIVES}
  assert report.chosen == autontk.Plan(
      Implementation.STRUCTURED_DERIVATIVES)


def test_payback_calls_is_validated():
  with pytest.raises(ValueError, match="payback_calls"):
    autontk.ntk_fn(F, payback_calls=-1)
