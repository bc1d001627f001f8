"""Learned calibration: measured time from cost features, per device kind.

The cost model predicts a candidate's run time from a roofline (FLOPs and
bytes over measured device peaks, plus per-call overhead). Real devices
deviate from rooflines in ways that depend on the method and the chunking
(fusion, kernel choice, loop overhead). Every timing the tuner takes is kept
in the plan cache with the candidate's :class:`CostFeatures`, so autontk
learns the deviation: a gradient-boosted regressor (scikit-learn) maps

    CostFeatures.vector() (log FLOPs, bytes, ..., log calls, log blocks),
    log baseline prediction, method one-hot

to ``log(measured / baseline prediction)``, one model per device kind,
trained on every measurement in the cache. The calibrated prediction is the
baseline times the learned factor, so with no data it is the baseline.

Training rows and predictions are :class:`CostEstimate` s: their
``predicted_time`` is the baseline (see :func:`rebase`), ``measured_time``
the target. Rows come labelled with the model signature they belong to, as
``(group, estimate)`` pairs, for honest held-out evaluation
(:func:`evaluate`): leave-one-model-out pairwise rank accuracy and the
regret of the top pick, next to the baseline's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np

from autontk._options import Implementation
from autontk.costmodel.estimate import CostEstimate
from autontk.costmodel.features import CostFeatures
from autontk.costmodel.predict import TimePredictor, describe

_METHODS = tuple(i.name.lower() for i in Implementation
                 if i is not Implementation.AUTO)
MIN_MODELS = 3
MIN_ROWS = 8

Labelled = tuple[str, CostEstimate]
"""A measured candidate and the model signature (group) it belongs to."""


class NotEnoughData(ValueError):
  """Too few measurements in the cache to fit or evaluate a calibration."""


def roofline_proxy(f: CostFeatures) -> float:
  """A device-agnostic stand-in when no baseline prediction exists."""
  return 1e-5 * f.blocks + (f.flops or 0.0) / 1e11 + (
      f.bytes_accessed or 0.0) / 1e10


def baseline(e: CostEstimate) -> float:
  """The prediction the calibration corrects."""
  p = e.predicted_time
  return p if p is not None and p > 0 else roofline_proxy(e.features)


def inputs(features: Sequence[CostFeatures],
           baselines: Sequence[float]) -> np.ndarray:
  """The regressor's input matrix, shape ``(len(features), n_inputs)``."""
  rows = [f.vector() + [math.log(b)] +
          [float(f.method == m) for m in _METHODS]
          for f, b in zip(features, baselines)]
  return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)


@dataclasses.dataclass
class Calibration:
  """A fitted calibration for one device kind.

  Attributes:
    device_kind: the device kind its timings came from.
    n_samples: measurements it was trained on.
    n_models: distinct signatures among them.
  """

  device_kind: str
  n_samples: int
  n_models: int
  _model: Any = dataclasses.field(repr=False, default=None)

  @staticmethod
  def fit(rows: Sequence[Labelled], device_kind: str = "") -> "Calibration":
    """Fits on measured rows (raises :class:`NotEnoughData`)."""
    rows = [(g, e) for g, e in rows if e.measured_time]
    groups = {g for g, _ in rows}
    if len(rows) < MIN_ROWS or len(groups) < 2:
      raise NotEnoughData(
          f"Calibration needs at least {MIN_ROWS} timings from 2 models; "
          f"have {len(rows)} from {len(groups)}. Run `autontk tune` on "
          "more models (or `autontk tune --suite`).")
    # Imported on first fit: scikit-learn takes a second to import, and most
    # processes never fit a calibration.
    from sklearn.ensemble import GradientBoostingRegressor
    ests = [e for _, e in rows]
    y = np.log([e.measured_time / baseline(e) for e in ests])
    model = GradientBoostingRegressor(
        n_estimators=150, max_depth=3, learning_rate=0.05, subsample=0.8,
        min_samples_leaf=2, random_state=0, loss="huber")
    model.fit(inputs([e.features for e in ests],
                     [baseline(e) for e in ests]), y)
    return Calibration(device_kind, len(rows), len(groups), model)

  def predict_s(self, estimates: Sequence[CostEstimate]) -> np.ndarray:
    """Calibrated predicted seconds, shape ``(len(estimates),)``."""
    return self.predict_features([e.features for e in estimates],
                                 [baseline(e) for e in estimates])

  def predict_features(self, features: Sequence[CostFeatures],
                       baselines: Sequence[float]) -> np.ndarray:
    """Calibrated seconds of ``features`` whose baseline predictions are
    ``baselines``."""
    if not features:
      return np.zeros((0,))
    factor = np.exp(self._model.predict(inputs(features, baselines)))
    return np.asarray(baselines, dtype=np.float64) * factor


def rebase(rows: Sequence[Labelled], base: TimePredictor) -> list[Labelled]:
  """Rows with ``predicted_time`` recomputed by the predictor ``base``.

  The cache stores whatever the planner predicted at the time (possibly an
  already calibrated prediction); the calibration must learn its
  correction over the same baseline it corrects at prediction time, from
  the same features.
  """
  out = []
  for g, e in rows:
    try:
      b = float(base.predict(e.features))
    except Exception:  # noqa: BLE001 - keep the stored prediction
      b = e.predicted_time
    out.append((g, dataclasses.replace(e, predicted_time=b) if b else e))
  return out


# Held-out evaluation -----------------------------------------------------------


def rank_accuracy(predicted: Sequence[float], measured: Sequence[float],
                  tie: float = 0.05) -> float:
  """Fraction of candidate pairs ordered as measured (pairs within ``tie``
  relative difference are skipped); NaN without pairs."""
  good = total = 0
  n = len(measured)
  for i in range(n):
    for j in range(i + 1, n):
      mi, mj = measured[i], measured[j]
      if abs(mi - mj) <= tie * min(mi, mj):
        continue
      total += 1
      good += (predicted[i] < predicted[j]) == (mi < mj)
  return good / total if total else math.nan


def top_pick_regret(predicted: Sequence[float],
                    measured: Sequence[float]) -> float:
  """Measured time of the predicted fastest over the measured fastest."""
  i = int(np.argmin(predicted))
  return float(measured[i] / min(measured))


def evaluate(rows: Sequence[Labelled]) -> dict[str, Any]:
  """Leave-one-model-out quality of the calibration vs. its baseline.

  Returns:
    ``{"n_models", "n_measurements", "calibrated": {...},
    "uncalibrated": {...}}`` where each inner dict holds the mean
    ``rank_accuracy``, ``geomean_regret`` and ``worst_regret`` over held-out
    models.
  """
  rows = [(g, e) for g, e in rows if e.measured_time]
  by_group: dict[str, list[CostEstimate]] = {}
  for g, e in rows:
    by_group.setdefault(g, []).append(e)
  usable = sorted(g for g, es in by_group.items() if len(es) >= 2)
  if len(usable) < MIN_MODELS or len(rows) < MIN_ROWS:
    raise NotEnoughData(
        f"Held-out evaluation needs {MIN_MODELS} models with at least two "
        f"timings each (and {MIN_ROWS} timings); have {len(usable)} models, "
        f"{len(rows)} timings. Run `autontk tune --suite` first.")
  scores: dict[str, tuple[list, list]] = {"calibrated": ([], []),
                                          "uncalibrated": ([], [])}
  for g in usable:
    test = by_group[g]
    measured = [e.measured_time for e in test]
    try:
      cal = Calibration.fit([r for r in rows if r[0] != g]).predict_s(test)
    except NotEnoughData:
      continue
    for name, pred in (("calibrated", cal),
                       ("uncalibrated", [baseline(e) for e in test])):
      acc = rank_accuracy(pred, measured)
      if not math.isnan(acc):
        scores[name][0].append(acc)
      scores[name][1].append(top_pick_regret(pred, measured))
  out: dict[str, Any] = {"n_models": len(usable), "n_measurements": len(rows)}
  for name, (accs, regrets) in scores.items():
    out[name] = {
        "rank_accuracy": float(np.mean(accs)) if accs else math.nan,
        "geomean_regret": (float(np.exp(np.mean(np.log(regrets))))
                           if regrets else math.nan),
        "worst_regret": float(max(regrets)) if regrets else math.nan}
  return out


# The predictor ------------------------------------------------------------------

MeasurementSource = Callable[[], Sequence[Labelled]]
"""``() -> measured rows`` of one device kind (e.g. from the plan cache)."""


class CalibratedPredictor:
  """A time predictor: a baseline, corrected by the learned calibration.

  Satisfies :class:`~autontk.costmodel.TimePredictor`. Nothing is read or
  fitted until the first prediction (so a plan-cache hit never pays for
  it); with too few timings it predicts what the baseline predicts.

  Args:
    base: the uncalibrated predictor (e.g. the roofline of this device).
    source: where the timings come from (``None``: no calibration).
    device_kind: the device kind the timings are from (for reports).

  >>> from autontk.costmodel.calibration import CalibratedPredictor
  >>> from autontk.costmodel.features import CostFeatures
  >>> class Flat:
  ...   def predict(self, features): return 1e-3
  >>> CalibratedPredictor(Flat()).predict(CostFeatures())
  0.001
  """

  def __init__(self, base: TimePredictor,
               source: MeasurementSource | None = None,
               device_kind: str = ""):
    self.base = base
    self._source = source
    self.device_kind = device_kind
    self._fitted: Calibration | None = None
    self._ready = False

  @property
  def calibration(self) -> Calibration | None:
    """The fitted calibration, or ``None`` without enough timings."""
    if not self._ready:
      self._ready = True
      rows = list(self._source()) if self._source is not None else []
      try:
        self._fitted = Calibration.fit(rebase(rows, self.base),
                                       self.device_kind)
      except NotEnoughData:
        self._fitted = None
    return self._fitted

  def predict(self, features: CostFeatures) -> float:
    base_s = float(self.base.predict(features))
    cal = self.calibration
    if cal is None or not base_s > 0:
      return base_s
    return float(cal.predict_features([features], [base_s])[0])

  def describe(self) -> str:
    base = describe(self.base)
    cal = self.calibration
    if cal is None:
      return base
    return (f"{base}, calibrated on {cal.n_samples} timings of "
            f"{cal.n_models} models")
