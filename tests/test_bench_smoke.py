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
  assert "| mlp | solve | 16 |" in text and "regret" in text


def test_predict_large_data_and_tables():
  from bench import predict_large
  x, y, xt, lt = predict_large.data(10)
  assert x.shape == (10, 8, 8, 1) and y.shape == (10, 10)
  assert xt.shape[0] == lt.shape[0] == predict_large.N_TEST
  sub = {"n": 10, "route": "matrix_free", "seconds": 1.0, "iterations": 5,
         "residual": 1e-4, "peak_rss_mib": 500.0, "accuracy": 0.5}
  res = {"subset_free": sub, "subset_dense": dict(sub, route="dense"),
         "subset_rel_diff": 1e-5, "budget_mib": 2048.0, "rank": 20,
         "tol": 1e-3, "diag_reg": 1e-2, "maxiter": 20,
         "probe": {"n": 50000, "product_s": 2.0, "compile_s": 1.0,
                   "peak_rss_mib": 900.0},
         "extrapolated": predict_large.extrapolate(2.0, 5)}
  assert res["extrapolated"]["columns"] == 20 + 60 + 10
  assert "extrapolated" in predict_large.markdown(res)


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
