"""The cost model: HLO cost extraction, memory budget, device constants and
time prediction for candidate plans.

* :mod:`~autontk.costmodel.hlo` reads ``cost_analysis()`` and
  ``memory_analysis()`` robustly (dict, list, None, -1).
* :mod:`~autontk.costmodel.memory` gives the memory budget.
* :mod:`~autontk.costmodel.device` measures and stores device constants.
* :mod:`~autontk.costmodel.predict` turns costs into predicted seconds
  (a pluggable :class:`TimePredictor`).
* :mod:`~autontk.costmodel.estimate` holds :class:`CostEstimate`.
"""

from autontk.costmodel.device import DeviceConstants as DeviceConstants
from autontk.costmodel.estimate import CostEstimate as CostEstimate
from autontk.costmodel.hlo import HloCost as HloCost
from autontk.costmodel.memory import MemoryBudget as MemoryBudget
from autontk.costmodel.predict import CostFeatures as CostFeatures
from autontk.costmodel.predict import RooflinePredictor as RooflinePredictor
from autontk.costmodel.predict import TimePredictor as TimePredictor
