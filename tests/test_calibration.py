"""Learned calibration: better held-out ranking than a biased roofline."""

import hashlib
import math

import numpy as np
import pytest

from autontk import Implementation, Plan, calibration
from autontk.calibration import (Calibration, NotEnoughData, Sample, evaluate,
                                 rank_accuracy, top_pick_regret)
from autontk.plancache import PlanCache

# On this synthetic device, Jacobian contraction runs 3x faster than its
# roofline, NTK-vector products 3x slower, and every host-loop block costs
# 0.2 ms of dispatch the roofline does not know about.
BIAS = {"jacobian_contraction": 1 / 3, "ntk_vector_products": 3.0,
        "structured_derivatives": 1.0}


def _synthetic(n_models: int, seed: int) -> list[Sample]:
  rng = np.random.default_rng(seed)
  out = []
  for g in range(n_models):
    flops0 = 10 ** rng.uniform(7, 10)
    bytes0 = 10 ** rng.uniform(5, 8)
    for method in BIAS:
      mult = 10 ** rng.uniform(-0.5, 0.5)  # methods differ in work
      for n_chunks, host in ((1, False), (4, False), (4, True)):
        s = Sample(group=f"m{seed}-{g}", method=method, flops=flops0 * mult,
                   bytes=bytes0 * mult * n_chunks ** 0.5,
                   transcendentals=flops0 / 100, peak_bytes=bytes0 / n_chunks,
                   n_chunks=n_chunks, host_loop=host)
        roof = calibration.roofline_proxy(s)
        true = roof * BIAS[method] + (2e-4 * n_chunks if host else 0.0)
        measured = true * math.exp(rng.normal(0, 0.03))
        out.append(Sample(**{**s.__dict__, "base_s": roof,
                             "measured_s": measured}))
  return out


def test_calibration_improves_held_out_ranking():
  samples = _synthetic(8, seed=0)
  result = evaluate(samples)
  cal, unc = result["calibrated"], result["uncalibrated"]
  assert result["n_models"] == 8 and result["n_measurements"] == 72
  assert cal["rank_accuracy"] > unc["rank_accuracy"] + 0.1
  assert cal["geomean_regret"] < unc["geomean_regret"]
  assert cal["rank_accuracy"] > 0.85


def test_calibration_on_unseen_models():
  model = Calibration.fit(_synthetic(8, seed=1), "synthetic")
  assert model.n_models == 8 and model.device_kind == "synthetic"
  test = _synthetic(4, seed=2)
  measured = [s.measured_s for s in test]
  base = [s.base_s for s in test]
  pred = model.predict_s(test)
  assert pred.shape == (len(test),)
  assert rank_accuracy(pred, measured) > rank_accuracy(base, measured)
  # Predictions are times, close to the truth (log error well below the
  # 3x bias of the roofline).
  log_err = np.abs(np.log(pred) - np.log(measured))
  assert np.median(log_err) < 0.3


def test_metrics():
  assert rank_accuracy([1, 2, 3], [1, 2, 3]) == 1.0
  assert rank_accuracy([3, 2, 1], [1, 2, 3]) == 0.0
  assert math.isnan(rank_accuracy([1, 2], [1.0, 1.01]))
  assert top_pick_regret([2, 1], [1.0, 1.5]) == 1.5


def test_not_enough_data():
  with pytest.raises(NotEnoughData, match="autontk tune"):
    Calibration.fit(_synthetic(1, seed=3)[:3])
  with pytest.raises(NotEnoughData, match="--suite"):
    evaluate(_synthetic(2, seed=3))


def test_from_cache_rows(tmp_path):
  cache = PlanCache(tmp_path, jax_compilation_cache=False)
  samples = _synthetic(4, seed=4)
  for g in sorted({s.group for s in samples}):
    # One candidate per method (unchunked), as a planner would record.
    rows = [{"plan": Plan(Implementation[s.method.upper()]),
             "predicted_s": s.base_s, "measured_s": s.measured_s,
             "features": {"flops": s.flops, "bytes": s.bytes}}
            for s in samples if s.group == g and s.n_chunks == 1]
    cache.record_candidates(hashlib.sha256(g.encode()).hexdigest(), rows)
  rows = cache.measurements()
  back = [Sample.from_row(r) for r in rows]
  assert len(back) == 12 and all(s.measured_s and s.base_s for s in back)
  assert {s.method for s in back} == set(BIAS)
  kind = rows[0]["device_kind"]
  fitted = calibration.for_device(cache, kind)
  assert fitted is not None and fitted.n_samples == 12
  assert calibration.for_device(cache, kind) is fitted  # memoised
  assert calibration.for_device(cache, "other device") is None
  report = calibration.evaluate_cache(cache, kind)
  assert report["device_kind"] == kind and report["n_models"] == 4


def test_calibrated_predictor_plugs_into_the_cost_model(tmp_path):
  predict = pytest.importorskip("autontk.costmodel.predict")
  cache = PlanCache(tmp_path, jax_compilation_cache=False)

  class Roofline:
    def predict(self, features):
      return calibration.roofline_proxy(
          calibration.sample_from_features(features, None))

  p = calibration.CalibratedPredictor(cache, base=Roofline(),
                                      device_kind="synthetic")
  assert isinstance(p, predict.TimePredictor)
  feats = predict.CostFeatures("ntk_vector_products", 1e9, 1e7, 0.0, 1e6)
  assert p.predict(feats) == Roofline().predict(feats)  # no data: roofline
  # With a calibration learned from the biased device, NTK-vector products
  # are predicted about 3x slower than their roofline.
  p._fitted, p._ready = Calibration.fit(_synthetic(8, seed=5)), True
  ratio = p.predict(feats) / Roofline().predict(feats)
  assert 2.0 < ratio < 4.5
  assert "calibrated on 72 timings" in p.describe()


def test_calibration_learns_over_the_base_it_corrects(tmp_path):
  """Stored predictions may come from an older (or calibrated) predictor;
  the fit recomputes them with the base predictor it will correct."""
  pytest.importorskip("autontk.costmodel.predict")
  cache = PlanCache(tmp_path, jax_compilation_cache=False)
  samples = _synthetic(6, seed=6)
  for g in sorted({s.group for s in samples}):
    rows = [{"plan": Plan(Implementation[s.method.upper()]),
             "predicted_s": 1.0,  # a stale, useless prediction
             "measured_s": s.measured_s,
             "features": {"flops": s.flops, "bytes": s.bytes}}
            for s in samples if s.group == g and s.n_chunks == 1]
    cache.record_candidates(hashlib.sha256(g.encode()).hexdigest(), rows)

  class Roofline:
    def predict(self, features):
      return calibration.roofline_proxy(
          calibration.sample_from_features(features, None))

  kind = cache.measurements()[0]["device_kind"]
  p = calibration.CalibratedPredictor(cache, base=Roofline(),
                                      device_kind=kind)
  test = [s for s in _synthetic(2, seed=7) if s.n_chunks == 1]
  pred = [p.predict(calibration.cost_features(s)) for s in test]
  log_err = np.abs(np.log(pred) - np.log([s.measured_s for s in test]))
  assert np.median(log_err) < 0.5  # the stale 1.0 s would be off by ~1e4
