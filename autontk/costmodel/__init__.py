"""The cost model: what a candidate plan costs, before running it.

* :mod:`~autontk.costmodel.features`: :class:`CostFeatures`, the one record
  of a program's work and memory, with its encodings.
* :mod:`~autontk.costmodel.measurement`: :class:`Timing`, what timing a
  candidate on the device measured.
* :mod:`~autontk.costmodel.loop_counts`: how often each operation of a
  program's text runs (the trip counts of the loops around it).
* :mod:`~autontk.costmodel.hlo`: reads XLA's cost and memory analyses
  robustly (dict, list, None, -1) into features.
* :mod:`~autontk.costmodel.estimate`: prices a candidate plan from its
  programs (:class:`CostEstimate`).
* :mod:`~autontk.costmodel.memory`: the memory budget.
* :mod:`~autontk.costmodel.device`: measures and stores device constants.
* :mod:`~autontk.costmodel.predict`: features to predicted seconds (a
  pluggable :class:`TimePredictor`, the roofline by default).
* :mod:`~autontk.costmodel.calibration`: the learned correction of a
  predictor from measured timings.
"""

from autontk.costmodel.device import DeviceConstants as DeviceConstants
from autontk.costmodel.estimate import CostEstimate as CostEstimate
from autontk.costmodel.features import CostFeatures as CostFeatures
from autontk.costmodel.measurement import Timing as Timing
from autontk.costmodel.memory import MemoryBudget as MemoryBudget
from autontk.costmodel.predict import RooflinePredictor as RooflinePredictor
from autontk.costmodel.predict import TimePredictor as TimePredictor
