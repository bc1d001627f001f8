"""An execution plan: which method computes the kernel, with which options.

The planner (``implementation="auto"``) chooses plans; explicit
implementations get the trivial plan for their method. A plan is a frozen,
hashable value: it keys compiled executables and the persistent plan cache.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from autontk import methods
from autontk._options import Implementation
from autontk._problem import NtkProblem


@dataclasses.dataclass(frozen=True)
class Plan:
  """How one NTK call signature is computed.

  Attributes:
    implementation: the exact method (never ``AUTO``).
    config: the method's options dataclass, or ``None`` for its defaults.
    chunking: how the batch is split into blocks, or ``None`` for one shot.
  """

  implementation: Implementation
  config: Any = None
  chunking: Any = None

  def __post_init__(self):
    if self.implementation is Implementation.AUTO:
      raise ValueError("A plan needs an explicit implementation, not AUTO.")

  def describe(self) -> str:
    parts = [self.implementation.name.lower()]
    if self.config is not None:
      parts.append(repr(self.config))
    if self.chunking is not None:
      parts.append(repr(self.chunking))
    return " ".join(parts)

  def execute(self, problem: NtkProblem) -> list[jax.Array]:
    """Kernels of ``problem`` (one per output leaf) under this plan."""
    if self.chunking is not None:
      return self.chunking.execute(self, problem)
    return methods.compute(self.implementation, problem, self.config)
