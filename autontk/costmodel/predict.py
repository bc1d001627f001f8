"""Predicted run time of a candidate plan from its HLO cost.

The default predictor is a roofline: compute time (FLOPs, with each
transcendental counted as several FLOPs) and memory time (bytes accessed;
what small kernels move at the cache-resident bandwidth, what transposes
that change the minor dimension move at the strided bandwidth) from the device's
measured constants (:mod:`autontk.costmodel.device`), plus
the launch terms: a per-call overhead for each compiled call the host
dispatches, a per-kernel cost for each kernel the programs launch, and a
per-iteration cost for each sequential loop iteration (the programs' own
loops and those the plan adds). On small kernels and long loops the launch
terms dominate: a 20-step scanned RNN steps through its loop body
sequentially whatever its FLOPs. On accelerators compute and
memory traffic overlap (``max``); on CPUs they mostly do not (``sum``).

Anything with a ``predict(features) -> seconds`` method is a
:class:`TimePredictor`, so a learned calibration (e.g. a regressor trained on
measured times) can replace the roofline: pass it as ``predictor=`` to
``ntk_fn(..., implementation="auto")``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

from autontk.costmodel import device as device_lib
from autontk.costmodel.features import CostFeatures


@runtime_checkable
class TimePredictor(Protocol):
  """Maps :class:`CostFeatures` to predicted seconds."""

  def predict(self, features: CostFeatures) -> float:
    ...


@dataclasses.dataclass(frozen=True)
class RooflinePredictor:
  """Roofline time model from measured device constants.

  Attributes:
    constants: the device's measured speeds.
    overlap: ``max(compute, memory)`` if true, else their sum.
    flops_per_transcendental: cost of one exp/tanh/... in FLOPs.

  >>> from autontk.costmodel.device import DeviceConstants
  >>> c = DeviceConstants(1e11, 1e10, 1e-5, 1e-6)
  >>> p = RooflinePredictor(c, overlap=False)
  >>> feats = CostFeatures(flops=1e9, bytes_accessed=1e8, transcendentals=0)
  >>> round(p.predict(feats), 4)
  0.02
  """

  constants: device_lib.DeviceConstants
  overlap: bool = False
  flops_per_transcendental: float = 16.0

  def predict(self, features: CostFeatures) -> float:
    c = self.constants
    grouped = features.grouped_conv_flops or 0.0
    depthwise = features.depthwise_conv_flops or 0.0
    dense = max((features.flops or 0.0) - grouped - depthwise, 0.0)
    flops = dense + self.flops_per_transcendental * (
        features.transcendentals or 0.0)
    compute = (flops / c.flops_per_s +
               grouped / (c.grouped_conv_flops_per_s or c.flops_per_s) +
               depthwise / (c.depthwise_conv_flops_per_s or c.flops_per_s))
    total = features.bytes_accessed or 0.0
    strided = min(features.strided_bytes or 0.0, total)
    resident = min(features.resident_bytes or 0.0, total - strided)
    memory = ((total - resident - strided) / c.bytes_per_s +
              resident / (c.resident_bytes_per_s or c.bytes_per_s) +
              strided / (c.strided_bytes_per_s or c.bytes_per_s))
    core = max(compute, memory) if self.overlap else compute + memory
    return core + self.launch(features)

  def launch(self, features: CostFeatures) -> float:
    """The launch terms of the prediction: calls, kernels, iterations."""
    c = self.constants
    iterations = features.loop_iterations + (
        features.inner_loop_iterations or 0.0)
    return (features.calls * c.call_overhead_s +
            (features.kernels or 0.0) * c.kernel_s +
            iterations * c.loop_iteration_s)

  def describe(self) -> str:
    c = self.constants
    return (f"roofline ({'max' if self.overlap else 'sum'}; "
            f"{c.flops_per_s / 1e9:.3g} GFLOP/s, {c.bytes_per_s / 1e9:.3g} "
            f"GB/s{_strided(c)}, call {c.call_overhead_s * 1e6:.3g} µs, "
            f"kernel "
            f"{c.kernel_s * 1e6:.3g} µs, iteration "
            f"{c.loop_iteration_s * 1e6:.3g} µs) on "
            f"{c.platform}:{c.device_kind}")


def _strided(c: device_lib.DeviceConstants) -> str:
  if not c.strided_bytes_per_s:
    return ""
  return f" ({c.strided_bytes_per_s / 1e9:.3g} GB/s strided)"


def default_predictor(device: Any = None) -> RooflinePredictor:
  """The roofline predictor with this device's (cached) constants."""
  c = device_lib.constants(device)
  return RooflinePredictor(c, overlap=c.platform not in ("cpu", ""))


def describe(predictor: TimePredictor) -> str:
  d = getattr(predictor, "describe", None)
  return d() if callable(d) else type(predictor).__name__
