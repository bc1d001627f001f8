"""Learned calibration: better held-out ranking than a biased roofline, and
trained on the same features it predicts from."""

import dataclasses
import hashlib
import math

import numpy as np
import pytest

from autontk import Implementation, Plan
from autontk.costmodel import calibration
from autontk.costmodel.calibration import (CalibratedPredictor, Calibration,
                                           NotEnoughData, evaluate,
                                           rank_accuracy, top_pick_regret)
from autontk.costmodel.device import DeviceConstants
from autontk.costmodel.estimate import CostEstimate
from autontk.costmodel.features import CostFeatures
from autontk.costmodel.predict import RooflinePredictor, TimePredictor
from autontk.plancache import PlanCache

# On this synthetic device, Jacobian contraction runs 3x faster than its
# roofline, NTK-vector products 3x slower, and every host-loop block costs
# 0.2 ms of dispatch the roofline does not know about.
BIAS = {"jacobian_contraction": 1 / 3, "ntk_vector_products": 3.0,
        "structured_derivatives": 1.0}


def _synthetic(n_models: int, seed: int) -> list[tuple[str, CostEstimate]]:
  rng = np.random.default_rng(seed)
  out = []
  for g in range(n_models):
    flops0 = 10 ** rng.uniform(7, 10)
    bytes0 = 10 ** rng.uniform(5, 8)
    for method in BIAS:
      mult = 10 ** rng.uniform(-0.5, 0.5)  # methods differ in work
      for blocks, host in ((1, False), (4, False), (4, True)):
        f = CostFeatures(method=method, flops=flops0 * mult,
                         bytes_accessed=bytes0 * mult * blocks ** 0.5,
                         transcendentals=flops0 / 100,
                         peak_memory=bytes0 / blocks, blocks=blocks,
                         calls=blocks + 1 if host else 1,
                         loop_iterations=0 if host else blocks - 1)
        roof = calibration.roofline_proxy(f)
        true = roof * BIAS[method] + (2e-4 * blocks if host else 0.0)
        measured = true * math.exp(rng.normal(0, 0.03))
        plan = Plan(Implementation[method.upper()])
        out.append((f"m{seed}-{g}", CostEstimate(
            plan, f, predicted_time=roof, measured_time=measured)))
  return out


def test_calibration_improves_held_out_ranking():
  result = evaluate(_synthetic(8, seed=0))
  cal, unc = result["calibrated"], result["uncalibrated"]
  assert result["n_models"] == 8 and result["n_measurements"] == 72
  assert cal["rank_accuracy"] > unc["rank_accuracy"] + 0.1
  assert cal["geomean_regret"] < unc["geomean_regret"]
  assert cal["rank_accuracy"] > 0.85


def test_calibration_on_unseen_models():
  model = Calibration.fit(_synthetic(8, seed=1), "synthetic")
  assert model.n_models == 8 and model.device_kind == "synthetic"
  test = [e for _, e in _synthetic(4, seed=2)]
  measured = [e.measured_time for e in test]
  base = [e.predicted_time for e in test]
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


def _store(cache: PlanCache, rows, predicted=None) -> None:
  """Records rows per group, as a planner or tuner would."""
  for g in sorted({g for g, _ in rows}):
    ests = [e if predicted is None else dataclasses.replace(
        e, predicted_time=predicted) for gg, e in rows if gg == g]
    cache.record_candidates(hashlib.sha256(g.encode()).hexdigest(), ests)


def test_cache_rows_round_trip_every_feature(tmp_path):
  cache = PlanCache(tmp_path, jax_compilation_cache=False)
  rows = [(g, e) for g, e in _synthetic(4, seed=4) if e.features.blocks == 1]
  _store(cache, rows)
  back = cache.measurements()
  assert len(back) == 12
  stored = {e.features for _, e in rows}
  assert {e.features for _, e in back} == stored  # nothing dropped
  assert all(e.measured_time and e.predicted_time for _, e in back)


class _Proxy:
  def predict(self, features):
    return calibration.roofline_proxy(features)


def test_calibrated_predictor_plugs_into_the_cost_model():
  p = CalibratedPredictor(_Proxy(), source=lambda: [],
                          device_kind="synthetic")
  assert isinstance(p, TimePredictor)
  feats = CostFeatures(method="ntk_vector_products", flops=1e9,
                       bytes_accessed=1e7, peak_memory=1e6)
  assert p.predict(feats) == _Proxy().predict(feats)  # no data: baseline
  # With a calibration learned from the biased device, NTK-vector products
  # are predicted about 3x slower than their roofline.
  rows = _synthetic(8, seed=5)
  p = CalibratedPredictor(_Proxy(), source=lambda: rows)
  ratio = p.predict(feats) / _Proxy().predict(feats)
  assert 2.0 < ratio < 4.5
  assert "calibrated on 72 timings" in p.describe()


def test_calibration_learns_over_the_base_it_corrects(tmp_path):
  """Stored predictions may come from an older (or calibrated) predictor;
  the fit recomputes them with the base predictor it will correct."""
  cache = PlanCache(tmp_path, jax_compilation_cache=False)
  rows = [(g, e) for g, e in _synthetic(6, seed=6) if e.features.blocks == 1]
  _store(cache, rows, predicted=1.0)  # a stale, useless prediction
  p = CalibratedPredictor(_Proxy(), source=cache.measurements)
  test = [e for _, e in _synthetic(2, seed=7) if e.features.blocks == 1]
  pred = [p.predict(e.features) for e in test]
  log_err = np.abs(np.log(pred) - np.log([e.measured_time for e in test]))
  assert np.median(log_err) < 0.5  # the stale 1.0 s would be off by ~1e4


def _conv_rows(n_models: int, seed: int, device: RooflinePredictor):
  """Candidates whose time is dominated by grouped convolutions, measured on
  a device the roofline describes exactly (grouped convs 20x below dense)."""
  rng = np.random.default_rng(seed)
  out = []
  for g in range(n_models):
    for method in BIAS:
      grouped = 10 ** rng.uniform(8, 9)
      f = CostFeatures(method=method, flops=grouped * 1.2,
                       bytes_accessed=10 ** rng.uniform(5, 6),
                       grouped_conv_flops=grouped, peak_memory=1e6)
      measured = device.predict(f) * math.exp(rng.normal(0, 0.02))
      out.append((f"conv{seed}-{g}", CostEstimate(
          Plan(Implementation[method.upper()]), f, predicted_time=1.0,
          measured_time=measured)))
  return out


def test_grouped_conv_slowdown_is_counted_once(tmp_path):
  """Trained on cached rows of grouped-conv candidates over a roofline that
  already charges grouped convolutions at their own rate, the calibration
  learns no further slowdown: the prediction stays at the measured time."""
  device = RooflinePredictor(DeviceConstants(
      1e11, 1e10, 0.0, 0.0, grouped_conv_flops_per_s=5e9,
      depthwise_conv_flops_per_s=5e9))
  cache = PlanCache(tmp_path, jax_compilation_cache=False)
  _store(cache, _conv_rows(6, seed=8, device=device))
  p = CalibratedPredictor(device, source=cache.measurements)
  assert p.calibration is not None
  for _, e in _conv_rows(2, seed=9, device=device):
    ratio = p.predict(e.features) / e.measured_time
    assert 0.7 < ratio < 1.4, ratio  # counted twice would be ~20x


def test_calibration_sees_the_launch_terms():
  """Kernels and loop iterations reach the regressor's input."""
  from autontk.costmodel import features
  assert {"kernels", "inner_loop_iterations"} <= set(features.VECTOR_FIELDS)
  a = CostFeatures(method="jacobian_contraction", flops=1e6,
                   bytes_accessed=1e5, transcendentals=0.0)
  b = dataclasses.replace(a, kernels=500.0, inner_loop_iterations=40.0)
  rows = calibration.inputs([a, b], [1e-3, 1e-3])
  changed = [i for i in range(rows.shape[1]) if rows[0, i] != rows[1, i]]
  assert len(changed) == 2
