"""The options of one ``python -m bench`` run, passed to every suite.

>>> cfg = RunConfig(quick=True, case_filter="mlp")
>>> cfg.selected("mlp_w64"), cfg.selected("cnn")
(True, False)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

from bench.measure import TimingPolicy


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Options of one bench run.

  Attributes:
    quick: small shapes and short timings (minutes on a 2-core machine).
    work: scratch directory (inputs for peers, kernels, logs).
    peers: which peers to run ("nt", "torch", "jax").
    budget_bytes: memory budget of the ``memory`` suite: compiled programs
      whose peak exceeds it are reported "over budget" and not run.
    peer_timeout_s: wall-clock limit of one peer subprocess.
    tune_budget_s: ``autontk.tune`` budget per case (``regret`` suite).
    case_filter: a regular expression; only cases whose name matches run.
    max_run_flops: programs above this many compiled FLOPs are compiled and
      analysed but not run (quick mode keeps to its time budget); torch's
      recipes are skipped above a quarter of it, judged by the FLOPs of
      autontk's program for the same method (torch runs eagerly and is
      slower per FLOP); neural-tangents' methods 1 and 2 above it, judged
      the same way.
    checkpoint: ``fn(partial_result)`` called after every case, so a suite
      stopped by a time limit still leaves its finished cases.
  """

  quick: bool = True
  work: str = "bench/_work"
  peers: tuple[str, ...] = ("nt", "torch", "jax")
  budget_bytes: float = 32 * 2**20
  peer_timeout_s: float = 900.0
  tune_budget_s: float = 20.0
  case_filter: str | None = None
  max_run_flops: float | None = None
  checkpoint: Callable[[dict[str, Any]], None] | None = None

  @property
  def policy(self) -> TimingPolicy:
    """How long one call is repeated when measured alone."""
    return TimingPolicy.quick() if self.quick else TimingPolicy.full()

  def selected(self, name: str) -> bool:
    """Whether the case ``name`` passes ``case_filter``."""
    return not self.case_filter or re.search(self.case_filter, name) is not None

  def save_partial(self, res: dict[str, Any]) -> None:
    """Hands a partial result to ``checkpoint`` (if any)."""
    if self.checkpoint is not None:
      self.checkpoint(dict(res, partial=True))
