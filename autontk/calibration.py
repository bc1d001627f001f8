"""Learned calibration: measured time from HLO features, per device kind.

The cost model predicts a candidate's run time from a roofline (FLOPs and
bytes over measured device peaks, plus per-call overhead). Real devices
deviate from rooflines in ways that depend on the method and the chunking
(fusion, kernel choice, loop overhead). Every timing the tuner takes is kept
in the plan cache with the candidate's HLO features, so autontk learns the
deviation: a gradient-boosted regressor (scikit-learn) maps

    log FLOPs, log bytes, log transcendentals, log peak memory,
    log chunk count, host-loop flag, method one-hot, log roofline prediction

to ``log(measured / roofline prediction)``, one model per device kind,
trained on every measurement in the cache. The calibrated prediction is the
roofline prediction times the learned factor, so with no data it is the
roofline itself.

:func:`evaluate` reports held-out quality honestly: leave-one-model-out
(train on all other signatures, predict the held-out signature's
candidates), as pairwise rank accuracy (how often two candidates are ordered
as measured) and the regret of the top pick (measured time of the predicted
fastest over the fastest), next to the same numbers for the roofline alone.
``autontk calibrate`` prints them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Sequence

import numpy as np

from autontk._options import Implementation

_METHODS = tuple(i.name.lower() for i in Implementation
                 if i is not Implementation.AUTO)
MIN_MODELS = 3
MIN_ROWS = 8


class NotEnoughData(ValueError):
  """Too few measurements in the cache to fit or evaluate a calibration."""


@dataclasses.dataclass(frozen=True)
class Sample:
  """One measured (or to-be-predicted) candidate.

  Attributes:
    group: the model signature it belongs to (for held-out evaluation).
    method: method name, e.g. ``"jacobian_contraction"``.
    flops, bytes, transcendentals, peak_bytes: HLO counts for the whole
      call (``0`` when unknown).
    n_chunks: number of blocks the chunking evaluates (1 unchunked).
    host_loop: a host-loop chunking (one dispatch per block).
    calls: compiled calls per evaluation (cost model's count; 0: derive).
    loop_iterations: compiled loop iterations (cost model's count).
    base_s: the uncalibrated (roofline) prediction, if any.
    measured_s: the measured median, if any.
  """

  group: str
  method: str
  flops: float = 0.0
  bytes: float = 0.0
  transcendentals: float = 0.0
  peak_bytes: float = 0.0
  n_chunks: int = 1
  host_loop: bool = False
  calls: int = 0
  loop_iterations: int = 0
  base_s: float | None = None
  measured_s: float | None = None

  @staticmethod
  def from_row(row: dict[str, Any]) -> "Sample":
    """A :class:`Sample` from a plan-cache ``candidates`` row."""
    feats = row.get("features") or {}
    if isinstance(feats, str):
      feats = json.loads(feats)
    scheme = None
    try:
      chunking = json.loads(row["plan"]).get("chunking") or {}
      scheme = (chunking.get("fields") or {}).get("scheme")
    except (KeyError, TypeError, ValueError):
      pass
    return Sample(
        group=row.get("signature", ""), method=row.get("method", ""),
        flops=_num(feats.get("flops")), bytes=_num(feats.get("bytes")),
        transcendentals=_num(feats.get("transcendentals")),
        peak_bytes=_num(feats.get("peak_bytes")),
        n_chunks=int(row.get("n_chunks") or feats.get("n_chunks") or 1),
        host_loop=scheme == "host",
        calls=int(_num(feats.get("calls"))),
        loop_iterations=int(_num(feats.get("loop_iterations"))),
        base_s=_pos(row.get("predicted_s")),
        measured_s=_pos(row.get("measured_s")))


def _num(v: Any) -> float:
  try:
    v = float(v)
  except (TypeError, ValueError):
    return 0.0
  return v if v > 0 and math.isfinite(v) else 0.0


def _pos(v: Any) -> float | None:
  v = _num(v)
  return v if v > 0 else None


def roofline_proxy(s: Sample) -> float:
  """A device-agnostic stand-in when the cost model gave no prediction."""
  return 1e-5 * s.n_chunks + s.flops / 1e11 + s.bytes / 1e10


def _base(s: Sample) -> float:
  return s.base_s if s.base_s is not None else roofline_proxy(s)


def features(samples: Sequence[Sample]) -> np.ndarray:
  """The regressor's input matrix, shape ``(len(samples), n_features)``."""
  rows = []
  for s in samples:
    rows.append([math.log1p(s.flops), math.log1p(s.bytes),
                 math.log1p(s.transcendentals), math.log1p(s.peak_bytes),
                 math.log(max(s.n_chunks, 1)), float(s.host_loop),
                 math.log(_base(s))]
                + [float(s.method == m) for m in _METHODS])
  return np.asarray(rows, dtype=np.float64).reshape(len(samples), -1)


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
  def fit(samples: Sequence[Sample], device_kind: str = "") -> "Calibration":
    """Fits on measured samples (raises :class:`NotEnoughData`)."""
    samples = [s for s in samples if s.measured_s is not None]
    groups = {s.group for s in samples}
    if len(samples) < MIN_ROWS or len(groups) < 2:
      raise NotEnoughData(
          f"Calibration needs at least {MIN_ROWS} timings from 2 models; "
          f"have {len(samples)} from {len(groups)}. Run `autontk tune` on "
          "more models (or `autontk tune --suite`).")
    from sklearn.ensemble import GradientBoostingRegressor
    x = features(samples)
    y = np.log([s.measured_s / _base(s) for s in samples])
    model = GradientBoostingRegressor(
        n_estimators=150, max_depth=3, learning_rate=0.05, subsample=0.8,
        min_samples_leaf=2, random_state=0, loss="huber")
    model.fit(x, y)
    return Calibration(device_kind, len(samples), len(groups), model)

  def predict_s(self, samples: Sequence[Sample]) -> np.ndarray:
    """Calibrated predicted seconds, shape ``(len(samples),)``."""
    if not samples:
      return np.zeros((0,))
    factor = np.exp(self._model.predict(features(samples)))
    return np.asarray([_base(s) for s in samples]) * factor


# Held-out evaluation ---------------------------------------------------------

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


def evaluate(samples: Sequence[Sample]) -> dict[str, Any]:
  """Leave-one-model-out quality of the calibration vs. the roofline alone.

  Returns:
    ``{"n_models", "n_measurements", "calibrated": {...},
    "uncalibrated": {...}}`` where each inner dict holds the mean
    ``rank_accuracy``, ``geomean_regret`` and ``worst_regret`` over held-out
    models.
  """
  samples = [s for s in samples if s.measured_s is not None]
  groups = sorted({s.group for s in samples})
  per_group = {g: [s for s in samples if s.group == g] for g in groups}
  usable = [g for g in groups if len(per_group[g]) >= 2]
  if len(usable) < MIN_MODELS or len(samples) < MIN_ROWS:
    raise NotEnoughData(
        f"Held-out evaluation needs {MIN_MODELS} models with at least two "
        f"timings each (and {MIN_ROWS} timings); have {len(usable)} models, "
        f"{len(samples)} timings. Run `autontk tune --suite` first.")
  scores = {"calibrated": ([], []), "uncalibrated": ([], [])}
  for g in usable:
    train = [s for s in samples if s.group != g]
    test = per_group[g]
    measured = [s.measured_s for s in test]
    try:
      cal = Calibration.fit(train).predict_s(test)
    except NotEnoughData:
      continue
    for name, pred in (("calibrated", cal),
                       ("uncalibrated", [_base(s) for s in test])):
      acc = rank_accuracy(pred, measured)
      if not math.isnan(acc):
        scores[name][0].append(acc)
      scores[name][1].append(top_pick_regret(pred, measured))
  out: dict[str, Any] = {"n_models": len(usable),
                         "n_measurements": len(samples)}
  for name, (accs, regrets) in scores.items():
    out[name] = {
        "rank_accuracy": float(np.mean(accs)) if accs else math.nan,
        "geomean_regret": (float(np.exp(np.mean(np.log(regrets))))
                           if regrets else math.nan),
        "worst_regret": float(max(regrets)) if regrets else math.nan}
  return out


# The cache's calibration -----------------------------------------------------

def _device_kind() -> str:
  import jax
  return jax.devices()[0].device_kind


def _local_base(device_kind: str) -> Any:
  """This machine's roofline when ``device_kind`` is this machine's."""
  if device_kind != _device_kind():
    return None
  from autontk.costmodel import predict
  return predict.default_predictor()


def evaluate_cache(cache: Any = None,
                   device_kind: str | None = None) -> dict[str, Any]:
  """:func:`evaluate` on every measurement of ``device_kind`` in ``cache``.

  The uncalibrated baseline is this machine's roofline when the timings are
  from this device kind, else the predictions stored with the timings.
  """
  from autontk.plancache import PlanCache
  cache = cache if cache is not None else PlanCache()
  device_kind = device_kind or _device_kind()
  samples = [Sample.from_row(r) for r in cache.measurements(device_kind)]
  base = _local_base(device_kind) if samples else None
  if base is not None:
    samples = rebase(samples, base)
  result = evaluate(samples)
  return {"device_kind": device_kind, **result}


_FITTED: dict[tuple[str, str, int, int], Calibration | None] = {}


def for_device(cache: Any = None, device_kind: str | None = None,
               base: Any = None) -> Calibration | None:
  """The calibration fitted on ``cache``'s timings for ``device_kind``.

  Fitted once per process and per number of measurements (cheap: a few
  hundred rows); ``None`` when there is not enough data yet. With ``base``
  (a predictor), it learns the correction over ``base``'s predictions.
  """
  from autontk.plancache import PlanCache
  cache = cache if cache is not None else PlanCache()
  device_kind = device_kind or _device_kind()
  rows = cache.measurements(device_kind)
  key = (str(cache.path), device_kind, len(rows), id(base))
  if key not in _FITTED:
    samples = [Sample.from_row(r) for r in rows]
    if base is not None:
      samples = rebase(samples, base)
    try:
      _FITTED[key] = Calibration.fit(samples, device_kind)
    except NotEnoughData:
      _FITTED[key] = None
  return _FITTED[key]


def sample_from_features(features: Any, base_s: float | None) -> Sample:
  """A :class:`Sample` from the cost model's ``CostFeatures``."""
  return Sample(
      group="", method=str(features.implementation),
      flops=_num(features.flops), bytes=_num(features.bytes_accessed),
      transcendentals=_num(features.transcendentals),
      peak_bytes=_num(features.peak_memory),
      n_chunks=int(getattr(features, "blocks", 1) or 1),
      host_loop=int(getattr(features, "calls", 1) or 1) > 1,
      calls=int(getattr(features, "calls", 1) or 1),
      loop_iterations=int(getattr(features, "loop_iterations", 0) or 0),
      base_s=base_s)


def cost_features(s: Sample) -> Any:
  """The cost model's ``CostFeatures`` of a sample (for its predictor)."""
  from autontk.costmodel.predict import CostFeatures
  calls = s.calls or ((s.n_chunks + 1) if s.host_loop else 1)
  loops = s.loop_iterations or (0 if s.host_loop or s.n_chunks == 1
                                else s.n_chunks)
  return CostFeatures(s.method, s.flops, s.bytes, s.transcendentals,
                      s.peak_bytes, calls, loops, s.n_chunks)


def rebase(samples: Sequence[Sample], base: Any) -> list[Sample]:
  """Samples with ``base_s`` recomputed by the predictor ``base``.

  The cache stores whatever the planner predicted at the time (possibly an
  already calibrated prediction); the calibration must learn its
  correction over the same base it corrects at prediction time.
  """
  out = []
  for s in samples:
    try:
      b = _pos(base.predict(cost_features(s)))
    except Exception:  # noqa: BLE001 - keep the stored prediction
      b = s.base_s
    out.append(dataclasses.replace(s, base_s=b if b else s.base_s))
  return out


class CalibratedPredictor:
  """A time predictor: the roofline, corrected by the learned calibration.

  Satisfies the cost model's ``TimePredictor`` protocol
  (``predict(features) -> seconds``). Nothing is read or fitted until the
  first prediction (so the plan cache's hit path never pays for it); with
  too few timings in the cache it predicts what the roofline predicts.

  Args:
    cache: the :class:`~autontk.PlanCache` whose timings train it (default:
      ``PlanCache()``).
    base: the uncalibrated predictor (default: the cost model's roofline
      for this device).
    device_kind: whose timings to use (default: this machine's).

  >>> from autontk.calibration import CalibratedPredictor
  >>> p = CalibratedPredictor()  # cheap: fits lazily
  """

  def __init__(self, cache: Any = None, base: Any = None,
               device_kind: str | None = None):
    self._cache = cache
    self._base = base
    self._device_kind = device_kind
    self._fitted: Calibration | None = None
    self._ready = False

  @property
  def base(self) -> Any:
    if self._base is None:
      from autontk.costmodel import predict
      self._base = predict.default_predictor()
    return self._base

  @property
  def calibration(self) -> Calibration | None:
    """The fitted calibration, or ``None`` without enough timings."""
    if not self._ready:
      self._fitted = for_device(self._cache, self._device_kind, self.base)
      self._ready = True
    return self._fitted

  def predict(self, features: Any) -> float:
    base_s = float(self.base.predict(features))
    cal = self.calibration
    if cal is None or not base_s > 0:
      return base_s
    return float(cal.predict_s([sample_from_features(features, base_s)])[0])

  def describe(self) -> str:
    d = getattr(self.base, "describe", None)
    base = d() if callable(d) else type(self.base).__name__
    cal = self.calibration
    if cal is None:
      return base
    return (f"{base}, calibrated on {cal.n_samples} timings of "
            f"{cal.n_models} models")
