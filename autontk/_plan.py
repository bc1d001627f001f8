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

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready form: method name, config fields, chunking."""
    config = None
    if self.config is not None:
      config = {"type": type(self.config).__name__,
                "fields": dataclasses.asdict(self.config)}
    chunking = None if self.chunking is None else self.chunking.to_dict()
    return {"implementation": self.implementation.name.lower(),
            "config": config, "chunking": chunking}

  @staticmethod
  def from_dict(d: dict[str, Any]) -> "Plan":
    """Inverse of :meth:`to_dict`."""
    impl = Implementation.parse(d["implementation"])
    config = None
    if d.get("config") is not None:
      config_type = methods.get(impl).config_type
      config = config_type(**d["config"]["fields"])
    chunking = None
    if d.get("chunking") is not None:
      from autontk.chunking import chunking_from_dict
      chunking = chunking_from_dict(d["chunking"])
    return Plan(impl, config, chunking)

  def execute(self, problem: NtkProblem) -> list[jax.Array]:
    """Kernels of ``problem`` (one per output leaf) under this plan."""
    if self.chunking is not None:
      return self.chunking.execute(self, problem)
    return methods.compute(self.implementation, problem, self.config)
