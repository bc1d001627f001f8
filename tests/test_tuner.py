"""The autotuner: the measured fastest wins, failures are infeasible, runs
resume."""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autontk
from autontk import BatchChunking, Implementation, Plan
from autontk.auto import tuner
from autontk.auto.planner import Planner, PlannerOptions, signature_of
from autontk.auto.tuner import TuneOptions, tune
from autontk.costmodel import CostEstimate
from autontk.plancache import PlanCache

JC = Plan(Implementation.JACOBIAN_CONTRACTION)
NVP = Plan(Implementation.NTK_VECTOR_PRODUCTS)
FAST = dict(progress=False, options=TuneOptions(min_time_s=0.005,
                                                min_repeats=3))


def _model():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  params = {"w": jax.random.normal(k1, (8, 64)),
            "v": jax.random.normal(k2, (64, 64))}

  def f(p, x):
    return jnp.tanh(x @ p["w"]) @ p["v"]

  return f, params, jax.random.normal(k3, (6, 8))


class SlowPlan(Exception):
  pass


def _slow(plan_to_slow, seconds):
  """A time_plan wrapper making one plan look slow (a deterministic device)."""
  real = tuner.time_plan

  def timed(ntk, plan, *args, **kw):
    t = real(ntk, plan, *args, **kw)
    if plan == plan_to_slow:
      t = dataclasses.replace(t, median_s=t.median_s + seconds,
                              min_s=t.min_s + seconds)
    return t

  return timed


def test_picks_the_measured_fastest_when_the_cost_model_is_wrong(
    tmp_path, monkeypatch):
  f, params, x = _model()
  # The "cost model" swears Jacobian contraction is 1000x faster; on this
  # device it is 50 ms slower per call.
  monkeypatch.setattr(tuner, "time_plan", _slow(JC, 0.05))
  wrong = [CostEstimate(JC, predicted_time=1e-6),
           CostEstimate(NVP, predicted_time=1e-3)]
  cache = PlanCache(tmp_path, jax_compilation_cache=False)
  result = tune(f, x, None, params, candidates=wrong, cache=cache, **FAST)
  assert result.plan == NVP
  rows = {e.plan: e for e in result.estimates}
  # The injected 50 ms is measured (on a loaded machine the kernels' own
  # times vary by more than their true difference).
  assert rows[JC].measured_time > 0.05
  assert rows[JC].predicted_time == 1e-6  # the prediction is kept, not used
  assert cache.lookup(result.signature) == NVP
  assert cache.source(result.signature) == "tuned"
  assert len(cache.measurements()) == 2
  assert "ntk_vector_products" in result.table()
  assert result.regret(NVP) == 1.0


def test_planner_candidates_with_injected_wrong_predictor(tmp_path):
  f, params, x = _model()

  class Backwards:
    """Predicts the opposite of the FLOP count: deliberately wrong."""

    def predict(self, features):
      return 1.0 / (1.0 + (features.flops or 0.0))

  ntk = autontk.ntk_fn(f, implementation=1)
  planner = Planner(PlannerOptions(predictor=Backwards()))
  cands = tuner.default_candidates(ntk, x, None, params, {}, planner)
  assert len(cands) >= 2 and all(c.predicted_time for c in cands)
  assert cands[0].flops and cands[0].features.blocks >= 1
  result = tune(f, x, None, params, predictor=Backwards(), cache=False,
                **FAST)
  measured = [e for e in result.estimates if e.measured_time is not None]
  assert len(measured) == len(cands)  # cheap space: every candidate timed
  best = min(measured, key=lambda e: e.measured_time)
  assert result.plan == best.plan
  # The backwards predictor ranked the most-FLOPs candidate first.
  by_pred = min(result.estimates, key=lambda e: e.predicted_time)
  assert by_pred.flops == max(e.flops for e in result.estimates)


def test_infeasible_candidate_does_not_stop_tuning():
  f, params, x = _model()
  # A chunked plan needs vmap_axes; without it, executing raises.
  bad = Plan(Implementation.JACOBIAN_CONTRACTION,
             chunking=BatchChunking(2, "scan"))
  result = tune(f, x, None, params, candidates=[bad, NVP], cache=False,
                **FAST)
  rows = {e.plan: e for e in result.estimates}
  assert not rows[bad].feasible and rows[bad].reason
  assert rows[bad].measured_time is None
  assert result.plan == NVP


def test_all_candidates_failing_raises_clearly():
  f, params, x = _model()
  bad = Plan(Implementation.JACOBIAN_CONTRACTION,
             chunking=BatchChunking(2, "scan"))
  with pytest.raises(RuntimeError, match="No candidate plan could be run"):
    tune(f, x, None, params, candidates=[bad], cache=False, **FAST)


def test_interrupted_run_resumes_without_retiming(tmp_path, monkeypatch):
  f, params, x = _model()
  cache = PlanCache(tmp_path, jax_compilation_cache=False)
  calls = []
  real = tuner.time_plan

  def interrupt_second(ntk, plan, *a, **kw):
    calls.append(plan)
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(ntk, plan, *a, **kw)

  monkeypatch.setattr(tuner, "time_plan", interrupt_second)
  with pytest.raises(KeyboardInterrupt):
    tune(f, x, None, params, candidates=[JC, NVP], cache=cache, **FAST)
  assert calls == [JC, NVP]
  assert list((tmp_path / "tuning").glob("*.journal"))

  calls.clear()
  monkeypatch.setattr(tuner, "time_plan", lambda ntk, plan, *a, **kw: (
      calls.append(plan), real(ntk, plan, *a, **kw))[1])
  result = tune(f, x, None, params, candidates=[JC, NVP], cache=cache,
                **FAST)
  assert calls == [NVP]  # JC's timing came from the journal
  assert all(e.measured_time for e in result.estimates)
  assert result.timed == 1
  # Clearing the signature clears its journal: everything is timed anew.
  cache.clear(result.signature)
  assert not list((tmp_path / "tuning").glob("*.journal"))
  calls.clear()
  tune(f, x, None, params, candidates=[JC, NVP], cache=cache, **FAST)
  assert sorted(calls, key=str) == sorted([JC, NVP], key=str)


def test_slower_candidate_stopped_early_and_budget(monkeypatch):
  f, params, x = _model()
  monkeypatch.setattr(tuner, "time_plan", _slow(JC, 0.0))
  result = tune(f, x, None, params, candidates=[NVP, JC], cache=False,
                **FAST)
  assert {e.plan for e in result.estimates if e.measured_time} == {NVP, JC}

  # A real slow candidate: stopped after its first repeat.
  runner = autontk.ntk_fn(f)
  slow = tuner.time_plan(runner, JC, x, None, params, {},
                         TuneOptions(min_time_s=10.0), stop_above_s=1e-9)
  assert slow.stopped_early and slow.repeats == 1

  # A budget that the first candidate exhausts: only the best predicted is
  # timed, and it is the answer.
  result = tune(f, x, None, params, cache=False, progress=False,
                candidates=[CostEstimate(NVP, predicted_time=1e-3),
                            CostEstimate(JC, predicted_time=1.0)],
                budget_s=1e-3)
  assert result.timed == 1 and result.plan == NVP


def test_time_plan_measures_real_work():
  f, params, x = _model()
  ntk = autontk.ntk_fn(f)
  t = tuner.time_plan(ntk, NVP, x, None, params, {},
                      TuneOptions(min_time_s=0.01, min_repeats=5))
  assert t.repeats >= 5 and 0 < t.min_s <= t.median_s < 1.0
  assert t.compile_s >= 0 and not t.stopped_early
  assert not ntk._programs  # timing does not keep programs alive


def test_bad_options():
  with pytest.raises(ValueError, match="budget_s"):
    TuneOptions(budget_s=0)
  with pytest.raises(ValueError, match="max_trials"):
    TuneOptions(max_trials=0)
  with pytest.raises(ValueError, match="stop_ratio"):
    TuneOptions(stop_ratio=1.0)
  f, params, x = _model()
  with pytest.raises(ValueError, match="empty"):
    tune(f, x, None, params, candidates=[], cache=False, progress=False)
  with pytest.raises(TypeError, match="candidates"):
    tune(f, x, None, params, candidates=["fast"], cache=False,
         progress=False)
  with pytest.raises(ValueError, match="x2"):
    tune(f, x, jnp.ones((3, 5)), params, cache=False, progress=False)


def test_tuned_plan_gives_the_reference_kernel():
  from reference import reference_ntk
  f, params, x = _model()
  result = tune(f, x, None, params, candidates=[NVP, JC], cache=False,
                **FAST)
  ntk = autontk.ntk_fn(f)
  got = ntk.execute(result.plan, x, None, params)
  want = reference_ntk(f, params, x, None, trace_axes=(-1,))
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


def test_ntk_fn_tune_true_tunes_on_first_use(tmp_path, monkeypatch):
  from reference import reference_ntk
  f, params, x = _model()
  cache = PlanCache(tmp_path, jax_compilation_cache=False)
  ntk = autontk.ntk_fn(f, plan_cache=cache,
                       tune=TuneOptions(min_time_s=0.005, progress=False))
  k = ntk(x, None, params)
  np.testing.assert_allclose(k, reference_ntk(f, params, x, None),
                             rtol=2e-4, atol=2e-4)
  sig = signature_of(ntk, x, None, params, {},
                     ntk.planner.cost_model.options)
  assert cache.source(sig) == "tuned"
  # A cheap space: every candidate was timed.
  assert len(cache.measurements()) == len(cache.candidates(sig)) >= 3

  # Another function (or process) with tune=True finds the tuned plan.
  def no_timing(*a, **kw):
    raise AssertionError("timed again")

  monkeypatch.setattr(tuner, "time_plan", no_timing)
  again = autontk.ntk_fn(f, plan_cache=cache, tune=True)
  assert again.plan(x, None, params) == ntk.plan(x, None, params)
  # Its cost report shows the measured times next to the predictions.
  report = again.report(x, None, params)
  assert sum(e.measured_time is not None for e in report.estimates) >= 2


TUNER_PROCESS = """
import sys
import jax.numpy as jnp, numpy as np
from autontk import Implementation, Plan
from autontk.plancache import PlanCache
from autontk.auto.tuner import TuneOptions, tune
rng = np.random.default_rng(0)
params = {"w": rng.normal(size=(8, 64)).astype("float32"),
          "v": rng.normal(size=(64, 64)).astype("float32")}
x = rng.normal(size=(6, 8)).astype("float32")
f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]
r = tune(f, x, None, params, cache=PlanCache(sys.argv[1]), progress=False,
         candidates=[Plan(Implementation(1)), Plan(Implementation(2))],
         options=TuneOptions(min_time_s=0.005))
print("best", r.plan.describe())
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_processes_tuning_the_same_model_at_once(tmp_path):
  import os
  import subprocess
  import sys
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "AUTONTK_JAX_CACHE": "0"}
  procs = [subprocess.Popen([sys.executable, "-c", TUNER_PROCESS,
                             str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
           for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err
    assert "best" in out
  cache = PlanCache(tmp_path, jax_compilation_cache=False)
  (entry,) = cache.entries()
  assert entry["source"] == "tuned"
  rows = cache.candidates(entry["signature"])
  assert len(rows) == 2 and all(e.measured_time for e in rows)


def test_close_calls_are_confirmed_interleaved():
  f, params, x = _model()
  opts = TuneOptions(min_time_s=0.005, confirm_ratio=100.0, confirm_rounds=2,
                     progress=False)
  result = tune(f, x, None, params, candidates=[JC, NVP], cache=False,
                options=opts)
  for e in result.estimates:
    assert e.timing.confirmed_s == e.measured_time and e.timing.median_s > 0
  best = min(result.estimates, key=lambda e: e.measured_time)
  assert result.plan == best.plan
  times = tuner.confirm(autontk.ntk_fn(f), [JC, NVP], x, None, params, {},
                        opts)
  assert set(times) == {JC, NVP} and all(0 < t < 1 for t in times.values())


def test_confirm_interleaves_call_by_call_and_stops_at_the_deadline(
    monkeypatch):
  f, params, x = _model()
  calls = []
  real = tuner._runner

  def counting(ntk, plan, *args):
    once = real(ntk, plan, *args)

    def timed():
      calls.append(plan)
      return once()
    return timed

  monkeypatch.setattr(tuner, "_runner", counting)
  ntk = autontk.ntk_fn(f)
  opts = TuneOptions(confirm_rounds=4, confirm_time_s=0.0, progress=False)
  tuner.confirm(ntk, [JC, NVP], x, None, params, {}, opts)
  # Compile and warm-up each, then rounds of one call each, the order
  # rotating by one every round.
  assert calls[4:] == [JC, NVP, NVP, JC, JC, NVP, NVP, JC]
  # Past the deadline, the minimum rounds still run when they are cheap...
  calls.clear()
  opts = TuneOptions(confirm_rounds=5, confirm_time_s=100.0, progress=False)
  tuner.confirm(ntk, [JC, NVP], x, None, params, {}, opts,
                deadline=time.perf_counter())
  assert len(calls) == 4 + 2 * 5
  # ... and one round only when they would take a tenth of the budget.
  calls.clear()
  opts = TuneOptions(budget_s=1e-4, confirm_rounds=50, confirm_time_s=100.0,
                     progress=False)
  tuner.confirm(ntk, [JC, NVP], x, None, params, {}, opts,
                deadline=time.perf_counter())
  assert len(calls) == 4 + 2


def test_confirmation_reuses_the_study_s_compiled_candidates(monkeypatch):
  f, params, x = _model()
  made = []
  real = tuner._runner

  def counting(ntk, plan, *args):
    made.append(plan)
    return real(ntk, plan, *args)

  monkeypatch.setattr(tuner, "_runner", counting)
  opts = TuneOptions(min_time_s=0.005, confirm_ratio=100.0, progress=False)
  result = tune(f, x, None, params, candidates=[JC, NVP], cache=False,
                options=opts)
  assert all(e.timing.confirmed_s is not None for e in result.estimates)
  assert sorted(made, key=str) == sorted([JC, NVP], key=str)  # one each
