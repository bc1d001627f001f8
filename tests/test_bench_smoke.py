"""Smoke test of the benchmark package (bench/): tiny shapes, no peers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

# bench/ is a top-level package beside autontk/, not installed with it.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import (autontk_runner, cases, compare, measure, record,  # noqa: E402
                   report, suites, timing)
from bench.__main__ import run_suite  # noqa: E402
from bench.config import RunConfig  # noqa: E402
from bench.zoo import specs  # noqa: E402
from reference import reference_ntk  # noqa: E402

TINY = measure.TimingPolicy(min_repeats=1, max_repeats=1, min_total_s=0.0,
                            max_total_s=0.0)


def _tiny_case(trace: bool) -> cases.Case:
  return cases.Case("tiny_" + ("trace" if trace else "full"), "fcn",
                    specs.fcn([3, 5, 2], "erf"), (3,), 2, 3, trace)


def test_zoo_specs_build_and_round_trip():
  for c in (cases.reference(True) + cases.regret(True) + cases.memory(True)
            + cases.scaling(True)):
    assert cases.Case.from_json(json.loads(json.dumps(c.to_json()))) == c
    shapes = specs.param_shapes(c.spec, c.in_shape)
    assert shapes and c.n_params == sum(int(np.prod(s))
                                        for s in shapes.values())
  assert len(cases.regret(True)) >= 12


@pytest.mark.parametrize("layer_spec,in_shape", [
    (specs.resnet(4, [1, 1], 3), (8, 8, 2)),
    (specs.mixer(8, 4, 8, 8, 1, 3, patch=2), (4, 4, 2)),
    (specs.rnn(4, 3), (5, 2)),
])
def test_zoo_apply_output_shape(layer_spec, in_shape):
  params = specs.init_params(layer_spec, in_shape)
  x = specs.init_inputs(in_shape, 2, 0)
  out = specs.apply(layer_spec)(params, x)
  assert out.shape == (2,) + specs.out_shape(layer_spec, in_shape)
  assert np.all(np.isfinite(np.asarray(out)))


def test_runner_kernels_match_reference():
  c = _tiny_case(trace=False)
  recs = autontk_runner.run_case(
      c, TINY, methods=("jacobian_contraction", "ntk_vector_products"),
      auto=False, jacrev=True, log=lambda *a: None)
  params, x1, x2 = c.arrays()
  ref = reference_ntk(specs.apply(c.spec), params, x1, x2,
                      trace_axes=c.trace_axes)
  for name in ("jacobian_contraction", "ntk_vector_products", "jax_jacrev"):
    rec = recs[name]
    assert rec["median_s"] > 0 and rec["flops"] and rec["flops"] > 0
    np.testing.assert_allclose(rec["_result"], ref, rtol=1e-4, atol=1e-6)
  compare._check_kernels({"autontk": recs})
  assert recs["ntk_vector_products"]["rel_err"] < 1e-4


def test_over_budget_is_not_run():
  c = _tiny_case(False)
  rec = autontk_runner.run_explicit(c, "jacobian_contraction", TINY,
                                    budget_bytes=1)
  assert rec["over_budget"] and "median_s" not in rec


def test_report_renders_tables_and_figures(tmp_path):
  c = _tiny_case(False)
  rec = {"median_s": 0.002, "first_call_s": 0.5, "flops": 10.0,
         "peak_bytes": 2**20}
  d = c.to_json()
  d.update(n_params=c.n_params, out_dim=c.out_dim,
           kernel_entries=c.kernel_entries, results={
               "autontk": {"jacobian_contraction": dict(rec),
                           "ntk_vector_products": dict(rec, median_s=0.004,
                                                       flops=5.0),
                           "structured_derivatives": {"error": "n/a"},
                           "auto": dict(rec, plan="jacobian_contraction",
                                        plan_method="jacobian_contraction",
                                        planning_s=0.1, compile_s=0.2,
                                        planning_over_compile=0.5)},
               "nt": {"nt1": dict(rec, median_s=0.003)}})
  res = {"cases": [d], "quick": True}
  text = report.reference_md(res)
  assert "| tiny_full |" in text and "1.5×" in text  # NT 1 / autontk best
  assert "geomean 1.000" in report.regret_md(res)  # auto chose the fastest
  links = report.figures(str(tmp_path), res, "regret")
  assert "regret.png" in links and os.path.exists(tmp_path / "regret.png")
  assert os.path.exists(tmp_path / "regret.csv")


def test_head_to_head_alternates_rounds_and_reports_median_ratios(
    monkeypatch):
  """SD and method 3 alternate round by round; the report takes each
  round's ratio and their median per case (runners stubbed: no peer)."""
  order = []
  sd = iter([0.010, 0.020, 0.010])
  nt3 = iter([0.030, 0.030, 0.015])

  def fake_sd(case, method, policy):
    order.append("sd")
    return {"median_s": next(sd)}

  def fake_nt3(cases_, cfg, log):
    order.append("nt3")
    return {c.name: next(nt3) for c in cases_}

  monkeypatch.setattr(autontk_runner, "run_explicit", fake_sd)
  monkeypatch.setattr(compare, "_nt3_round", fake_nt3)
  c = _tiny_case(False)
  h = compare.head_to_head([c], RunConfig(peers=("nt",)), 3, log=lambda m: 0)
  assert order == ["sd", "nt3"] * 3
  assert h[c.name] == {"sd_s": [0.010, 0.020, 0.010],
                       "nt3_s": [0.030, 0.030, 0.015]}
  assert compare.head_to_head([c], RunConfig(peers=("torch",)), 3) == {}
  d = c.to_json()
  d.update(n_params=c.n_params, out_dim=c.out_dim,
           kernel_entries=c.kernel_entries, head_to_head=h[c.name],
           sd_phases={"cotangents": 0.5, "pairs": 0.5, "other": 0.0},
           results={"autontk": {"structured_derivatives": {
               "median_s": 0.01}}, "nt": {"nt3": {"median_s": 0.02}}})
  text = report.reference_md({"cases": [d], "quick": True})
  assert "3.00 / 1.50 / 1.50" in text and "| 1.50× |" in text
  assert "**1.50×**" in text and "column: 2.00×" in text
  # bound: median NT 3 (30 ms) over half of median SD (10 ms)
  assert "| 50% | 6.00× |" in text and "at most **6.00×**" in text


def test_phase_split_of_structured_derivatives():
  """The profile's split of structured derivatives' time: shares of the
  cotangents and the pair products, summing to one."""
  c = _tiny_case(False)
  split = autontk_runner.sd_phases(c)
  assert set(split) == {"cotangents", "pairs", "other"}, split
  assert abs(sum(split.values()) - 1) < 1e-9
  assert split["cotangents"] > 0 and split["pairs"] > 0


def test_interleave_retimes_in_turn_and_keeps_the_sequential_median():
  calls = []

  def rec(name, median):
    return {"median_s": median, "min_s": median, "repeats": 2,
            "_call": lambda: calls.append(name)}

  a, b = rec("a", 1e-3), rec("b", 1e-3)
  slow = rec("slow", 10.0)          # above max_median_s: left alone
  failed = {"error": "n/a"}         # no measurement: left alone
  timing.interleave([a, b, slow, failed], time_s=0.0, rounds=3)
  # The library's protocol: a compile call each, a warm-up call each, then
  # rounds that start one candidate later each time.
  assert calls == ["a", "b", "a", "b", "a", "b", "b", "a", "a", "b"]
  for r in (a, b):
    assert r["median_seq_s"] == 1e-3 and r["interleaved_rounds"] == 3
    assert r["repeats"] == 5 and r["min_s"] <= r["median_s"]
  assert "median_seq_s" not in slow and slow["median_s"] == 10.0
  assert failed == {"error": "n/a"}


@pytest.mark.subprocess
def test_every_suite_is_listed_with_one_line():
  out = subprocess.run([sys.executable, "-m", "bench", "--list"], cwd=ROOT,
                       capture_output=True, text=True, check=True,
                       env=dict(os.environ, PYTHONPATH=ROOT)).stdout
  lines = out.strip().splitlines()
  assert [l.split()[0] for l in lines] == list(suites.SUITES)
  assert all(len(l.split()) > 3 for l in lines)


def test_a_tiny_suite_run_is_recorded(tmp_path):
  cfg = RunConfig(quick=True, peers=(), case_filter="^mlp_w32_o10$",
                  work=str(tmp_path / "work"))
  info = record.machine_info()
  tag = record.machine_tag(info)
  assert run_suite(suites.SUITES["scaling"], cfg, str(tmp_path), tag, info)
  res = json.loads((tmp_path / "scaling.json").read_text())
  assert res["suite"] == "scaling" and res["tag"] == tag
  assert res["machine"]["backend"] and res["date_utc"] and res["quick"]
  assert [c["name"] for c in res["cases"]] == ["mlp_w32_o10"]
  assert "median_s" in res["cases"][0]["results"]["autontk"]["auto"]
  text = (tmp_path / "scaling.md").read_text()
  assert text.startswith("# `scaling`") and f"`{tag}`" in text
  assert (tmp_path / "scaling.csv").exists()


def test_predict_routes_case_and_tables():
  from bench import predict_routes
  rec = predict_routes.case(predict_routes.models(16)["mlp"], 16, "solve")
  assert rec["rel_diff"] < 1e-2 and rec["regret"] >= 1.0
  assert rec["auto"] in ("dense", "matrix_free")
  rec["model"] = "mlp"
  text = predict_routes.markdown({"records": [rec]})
  assert "| mlp | solve | 1 | 16 |" in text and "regret" in text


def test_predict_large_data_and_tables():
  from bench import predict_large
  x, y, xt, lt = predict_large.data(10)
  assert x.shape == (10, 8, 8, 1) and y.shape == (10, 10)
  assert xt.shape[0] == lt.shape[0] == predict_large.N_TEST
  sub = {"n": 10, "route": "matrix_free", "seconds": 1.0, "iterations": 5,
         "residual": 1e-4, "peak_rss_mib": 500.0, "accuracy": 0.5,
         "dtype": "float64"}
  res = {"subset_free": sub, "subset_dense": dict(sub, route="dense"),
         "large": dict(sub, n=50000, dtype="float32", seconds=600.0),
         "subset_rel_diff": 1e-5, "budget_mib": 2048.0, "rank": 20,
         "tol": 1e-3, "diag_reg": 1e-2, "maxiter": 10, "subset_tol": 1e-9,
         "n_test": 500,
         "probe": {"n": 50000, "product_s": 2.0, "compile_s": 1.0,
                   "peak_rss_mib": 900.0}}
  text = predict_large.markdown(res)
  assert "| matrix_free | 50000 | float32 | 600.0 |" in text
  assert "10.0 min" in text and "9.3 GiB" in text


@pytest.mark.slow
def test_diagnostics_accuracy_rows_and_table():
  from bench import diagnostics_accuracy as acc
  kerns = acc._formed(acc._models(24)["mlp"])
  rows = acc._sweep("mlp", kerns, 24, {e: (12,) for e in acc.ESTIMATORS}, 1,
                    lambda *a: None)
  assert [r["estimator"] for r in rows] == list(acc.ESTIMATORS)
  assert all(r["max_rel_err"] < 1.0 for r in rows)
  text = acc.markdown({"n": 24, "seeds": 1, "rows": rows, "defaults": rows})
  assert "| mlp | top10 |" in text and "default budgets" in text


@pytest.mark.slow
def test_diagnostics_scaling_case_and_tables(tmp_path):
  from bench import diagnostics_scaling as sc
  rec = sc.case("mlp", 40, rounds=1)
  assert rec["top10_err"] < 1e-3 and rec["rank_err"] < 0.1
  assert set(rec["auto"].values()) <= {"dense", "matrix-free"}
  alone = sc.case("mlp", 40, rounds=1, dense_route=False)
  assert alone["ratio"] is None and alone["dense_s"] is None
  m = sc._model("mlp", 40)
  want = np.linalg.eigvalsh(np.asarray(reference_ntk(
      m.f, m.params, m.x1, None), np.float64))[::-1][:10]
  np.testing.assert_allclose(alone["values"]["top10"], want, rtol=1e-3)
  res = {"records": [rec, {**rec, "n": 80, "ratio": 0.5},
                     {**alone, "n": 160}]}
  assert sc.crossover(res["records"]) == 80
  text = sc.markdown(res)
  assert "| mlp | 40 |" in text and "N = 80" in text and "| 160 | – |" in text
  assert sc.figures(str(tmp_path), res)


def test_diagnostics_large_table():
  from bench import diagnostics_large
  row = {"quantity": "kernel distance", "value": 0.1, "error": 0.01,
         "exact": False, "route": "matrix-free", "method": "Hutch++",
         "seconds": 3.0}
  res = {"n": 20000, "probes": 10, "budget_mib": 1024.0, "seconds": 600.0,
         "peak_rss_mib": 900.0,
         "rows": [dict(row, group=None), dict(row, group="conv")]}
  text = diagnostics_large.markdown(res)
  assert "| kernel distance | conv | 0.1 | 0.01 | 3.0 |" in text
  assert "1.49 GiB" in text and "10.0 min" in text


@pytest.mark.slow
def test_scanned_zoo_kernels_match_reference():
  """Each scanned model's NTK by structured derivatives equals the float64
  reference on a small slice of its batch."""
  import autontk
  from bench.zoo import scanned
  for name, make in scanned.SCANNED.items():
    m = make()
    x1, x2 = m.x1[:2], m.x2[:3]
    got = autontk.ntk_fn(m.f, trace_axes=m.trace_axes, vmap_axes=m.vmap_axes,
                         implementation="structured_derivatives")(
                             x1, x2, m.params)
    want = reference_ntk(m.f, m.params, x1, x2, m.trace_axes)
    scale = np.abs(want).max()
    np.testing.assert_allclose(np.asarray(got, np.float64), want,
                               atol=2e-4 * scale, err_msg=name)


def test_scanned_regret_table_has_before_and_after():
  from bench import scanned_regret
  case = {"name": "m", "regret": 1.1, "regret_choice": 1.0, "results": {
      "jacobian_contraction": {"median_s": 2e-3},
      "ntk_vector_products": {"median_s": 3e-3},
      "structured_derivatives": {"median_s": 1e-3},
      "auto": {"median_s": 1.1e-3, "plan": "structured_derivatives",
               "plan_method": "structured_derivatives"}},
      "predicted": {"structured_derivatives": {"predicted_s": 1e-3}}}
  before = dict(case, regret=2.0, regret_choice=2.0, results=dict(
      case["results"], auto={"plan": "jacobian_contraction",
                             "plan_method": "jacobian_contraction"}))
  res = {"cases": [case], "load_start": [1.0, 1.0, 1.0],
         "summary": {"regret": {"geomean": 1.1, "worst": 1.1, "n": 1}},
         "baseline": {"cases": [before], "summary": {
             "regret": {"geomean": 2.0, "worst": 2.0, "n": 1}}},
         "baseline_path": "before"}
  text = scanned_regret.markdown(res)
  row = next(l for l in text.splitlines() if l.startswith("| m |"))
  assert "| SD | 1.10 | 1.00 |" in row and row.endswith("| JC | 2.00 | 2.00 |")
  assert "worst 2.00" in text and "worst 1.10" in text


def test_machine_speed_families_and_table():
  import jax

  from bench import machine_speed
  from bench.zoo.families import FAMILIES
  for name in ("mixer_scan", "rnn_scan"):  # the unrolled twin, same values
    m, twin = FAMILIES[name](False), FAMILIES[name](True)
    np.testing.assert_allclose(m.f(m.params, m.x1), twin.f(twin.params,
                                                           twin.x1),
                               rtol=1e-5, atol=1e-6)
  for name, make in FAMILIES.items():
    m = make(False)
    assert jax.eval_shape(m.f, m.params, m.x1).shape[0] == m.x1.shape[0]
  sd = {"method": "structured_derivatives", "median_s": 0.01, "flops": 1e9,
        "bytes": 1e8, "pct_peak": 25.0, "pct_roofline": 30.0,
        "bound": "flops", "rel_err": 1e-7,
        "phases": {"cotangents": 0.6, "pairs": 0.4, "other": 0.0}}
  case = {"name": "mlp", "family": "control", "note": "n",
          "peak_flops_per_s": 4e11, "bandwidth_bytes_per_s": 1e10,
          "records": [sd, {"method": "jacobian_contraction",
                           "over_budget": True, "flops": 1e9}]}
  res = {"cases": [case], "baseline": {"date_utc": "then", "cases": [
      dict(case, records=[dict(sd, pct_peak=5.0, median_s=0.05)])]}}
  md = machine_speed.markdown(res)
  assert "| mlp | control | n/a | n/a | 25.0 % | 5.0 % | 10.00 | 50.00 |" in md
  assert "30 % (flops) | 60% |" in md and "over budget" in md


def test_xla_options_method_record_and_table():
  """Both executables of one call give the same kernel; the table shows
  both medians, their ratio and the per-method geometric mean."""
  import jax.numpy as jnp

  import autontk
  from bench import xla_options
  f = lambda p, x: jnp.tanh(x @ p["w"]) @ p["v"]  # noqa: E731
  params = {"w": jnp.ones((3, 5)) / 3, "v": jnp.ones((5, 2)) / 5}
  x = jnp.arange(12.0).reshape(4, 3) / 12
  options = autontk.compiler_options() or {}
  rec = xla_options.run_method(f, {"trace_axes": ()}, (x, x, params),
                               "structured_derivatives", options, 2)
  assert rec["rel_diff"] < 1e-6 and rec["speedup"] > 0
  res = {"options": {"k": "v"}, "cases": [{"name": "tiny", "records": [
      dict(rec, speedup=2.0, defaults_s=0.002, options_s=0.001),
      {"method": "jacobian_contraction", "skipped": "over the limit"}]}]}
  md = xla_options.markdown(res)
  assert "| tiny | SD | 2 | 1 | 2.00× |" in md and "over the limit" in md
  assert "SD 2.00× (1 models)" in md
  assert "defaults" in xla_options.markdown({"options": None, "cases": []})
