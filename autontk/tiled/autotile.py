"""``tile="auto"``: the largest tile whose compiled program fits the budget.

The peak memory of one tile's program is read from XLA
(``compile().memory_analysis()``: arguments + outputs + temporaries). It grows
at most quadratically with the tile size (Jacobians linearly, kernel blocks
quadratically), so three small probes give a fit that proposes a size; that
size is then compiled and checked, halving until it fits.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from autontk import _kwargs
from autontk.costmodel import memory

MAX_TILE = 2048
"""Largest automatic tile: bounds the work lost to a kill and the latency of
the progress bar."""


def memory_budget_bytes(device: Any) -> int:
  """Half the memory available to one device.

  GPUs and TPUs report their own limit; CPU devices share the host's
  available memory, divided among the local CPU devices.
  """
  total, _ = memory.device_memory(device)
  n = 1
  if device.platform == "cpu":
    n = max(1, sum(1 for d in jax.local_devices() if d.platform == "cpu"))
  return int(total) // (2 * n)


def host_available_bytes() -> int:
  """The host's available memory."""
  return int(memory.system_available())


def tile_peak_bytes(ntk, side1, side2, params, t1: int, t2: int,
                    same_inputs: bool) -> int:
  """Peak memory of one ``t1 × t2`` tile's compiled program, in bytes."""
  x1, kw1 = side1.host_tile((0, min(t1, side1.size)), t1)
  if same_inputs:
    x2, kw2 = None, kw1
  else:
    x2, kw2 = side2.host_tile((0, min(t2, side2.size)), t2)
  kwargs = {k: (kw1[k], kw2[k]) for k in kw1}
  plan = ntk.plan(x1, x2, params, **kwargs)
  # Python values (kwargs, constants among the params) are closed over.
  dynamic, static_key = _kwargs.split_static(kwargs)
  p_dyn, p_static = _kwargs.split_params(params)

  def one_tile(p_dyn, x1, x2, dynamic):
    params = _kwargs.merge_static(p_dyn, p_static)
    kw = _kwargs.merge_static(dynamic, static_key)
    return jax.tree.leaves(ntk.execute(plan, x1, x2, params, **kw))

  stats = jax.jit(one_tile).lower(p_dyn, x1, x2, dynamic).compile()
  mem = stats.memory_analysis()
  if mem is None:
    return 0
  peak = getattr(mem, "peak_memory_in_bytes", 0) or 0
  if peak <= 0:
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes +
            mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  return int(peak)


def _tiles(n1: int, n2: int, t: int, square: bool) -> int:
  r, c = math.ceil(n1 / t), math.ceil(n2 / t)
  return r * (r + 1) // 2 if square and n1 == n2 else r * c


def choose_tile(ntk, side1, side2, params, n1: int, n2: int, *,
                square: bool, devices: int, budget: int,
                same_inputs: bool = False) -> tuple[int, int]:
  """The tile ``(t1, t2)`` for ``tile="auto"``.

  Raises:
    MemoryError: not even a 1 × 1 tile fits ``budget``.
  """
  cap = min(MAX_TILE, max(n1, n2))
  # Keep every device busy when the kernel is small.
  while cap > 1 and _tiles(n1, n2, cap, square) < devices:
    cap = math.ceil(cap / 2)

  def peak(t: int) -> int:
    return tile_peak_bytes(ntk, side1, side2, params, min(t, n1), min(t, n2),
                           same_inputs)

  probes = [t for t in (4, 8, 16) if t <= cap]
  if len(probes) == 3:
    ys = [peak(t) for t in probes]
    coef = np.polyfit(probes, ys, 2)
    t = cap
    while t > 16 and np.polyval(coef, t) > budget:
      t //= 2
  else:
    t = cap
  while True:
    if peak(t) <= budget:
      break
    if t == 1:
      raise MemoryError(
          f"One example pair needs more than `memory_budget`={budget} bytes "
          "per device; raise it or use a plan with less memory.")
    t = max(1, t // 2)
  return min(t, n1), min(t, n2)
