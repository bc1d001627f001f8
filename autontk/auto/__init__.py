"""``implementation="auto"``: choosing a plan per call signature.

* :mod:`~autontk.auto.cached`: :class:`AutoPlanner`, the planner every
  :class:`~autontk.NtkFn` from ``ntk_fn`` is handed: memo, plan cache,
  tuner and cost model, in that order.
* :mod:`~autontk.auto.tuner`: :func:`tune`, timing candidates on the device,
  through its study (:mod:`~autontk.auto.study`, a resumable queue of
  candidates) and the timing protocol (:mod:`~autontk.auto.timing`).
* :mod:`~autontk.auto.planner`: :class:`Planner`, candidates → estimates →
  shortlist → choice, from the cost model alone.
* :mod:`~autontk.auto.report`: :class:`CostReport`, every candidate of a
  call (live, tuned or cached) as a table, JSON or a plot.
"""

from autontk.auto.cached import AutoPlanner as AutoPlanner
from autontk.auto.planner import Planner as Planner
from autontk.auto.planner import PlannerOptions as PlannerOptions
from autontk.auto.report import CostReport as CostReport
from autontk.auto.tuner import TuneOptions as TuneOptions
from autontk.auto.tuner import TuneResult as TuneResult
from autontk.auto.tuner import tune as tune
