"""The memory budget: how many bytes one NTK evaluation may hold at once.

On accelerators the budget is a fraction of the device's memory limit
(``device.memory_stats()["bytes_limit"]``); on CPU, where ``memory_stats()``
is ``None``, a fraction of the system memory available now. A candidate plan
whose peak memory exceeds the budget is infeasible.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

DEFAULT_FRACTION = {"cpu": 0.5}
"""Default fraction per platform; other platforms use ``_ACCEL_FRACTION``."""
_ACCEL_FRACTION = 0.9


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
  """A budget in bytes and where it came from.

  Attributes:
    bytes: the budget.
    source: human-readable origin, e.g. ``"0.5 × 23.1 GB system memory"``.
  """

  bytes: float
  source: str

  def fits(self, peak: float | None) -> bool:
    return peak is None or peak <= self.bytes


def device_memory(device: Any = None) -> tuple[float, str]:
  """``(bytes, description)`` of the memory one computation can use."""
  device = device or jax.devices()[0]
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001 - unsupported on some backends
    stats = None
  if stats and stats.get("bytes_limit"):
    limit = float(stats["bytes_limit"])
    in_use = float(stats.get("bytes_in_use", 0))
    return limit - in_use, f"{device.device_kind} memory"
  return system_available(), "available system memory"


def system_available() -> float:
  try:
    import psutil
    return float(psutil.virtual_memory().available)
  except ImportError:
    pass
  try:
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
  except (ValueError, OSError, AttributeError):
    return 8e9  # unknown platform: a conservative guess


def budget(memory_budget: float | int | None = None,
           device: Any = None) -> MemoryBudget:
  """The budget for ``memory_budget`` as given to ``ntk_fn``.

  Args:
    memory_budget: ``None`` for the platform default fraction, a float in
      (0, 1] for a fraction of device (or system) memory, or an int > 1 for
      an absolute number of bytes.
    device: the device (default: the first one).

  Returns:
    A :class:`MemoryBudget`.

  >>> budget(10_000_000).bytes
  10000000.0
  """
  if memory_budget is not None:
    if isinstance(memory_budget, bool) or not isinstance(
        memory_budget, (int, float)) or memory_budget <= 0:
      raise ValueError("`memory_budget` must be a fraction in (0, 1] or a "
                       f"number of bytes > 1; got {memory_budget!r}.")
    if memory_budget > 1:
      return MemoryBudget(float(memory_budget),
                          f"{_gb(memory_budget)} set by the user")
  total, what = device_memory(device)
  platform = (device or jax.devices()[0]).platform
  fraction = (float(memory_budget) if memory_budget is not None else
              DEFAULT_FRACTION.get(platform, _ACCEL_FRACTION))
  return MemoryBudget(fraction * total, f"{fraction:g} × {_gb(total)} {what}")


def _gb(b: float) -> str:
  return f"{b / 1e9:.3g} GB" if b >= 1e8 else f"{b / 1e6:.3g} MB"
