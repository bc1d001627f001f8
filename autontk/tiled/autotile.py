"""``tile="auto"``: the largest tile whose compiled program fits the budget.

The peak memory of a tile's program is read from XLA by the cost model's
reader (:func:`autontk.costmodel.hlo.analyse_compiled`: the larger of XLA's
peak and arguments + outputs + temporaries, since XLA CPU's
``peak_memory_in_bytes`` counts only arguments and outputs). The program is
the one ``ntk`` runs for the tile shape with the plan it chooses for it
(``ntk.lower``). Peak memory grows at most quadratically with the tile size
(Jacobians linearly, kernel blocks quadratically), so three small probes
give a fit that proposes a size; that size is then compiled and checked for
every kind of tile the grid holds, halving until it fits.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from autontk._kernel_fn import NtkFn
from autontk._types import PyTree
from autontk.costmodel import hlo, memory
from autontk.tiled.batch import Side, ntk_arguments

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


def tile_program(ntk: NtkFn, side1: Side, side2: Side, params: PyTree,
                 t1: int, t2: int, same_inputs: bool) -> Any:
  """The compiled program of one ``t1 × t2`` tile, with its plan.

  Args:
    ntk: the NtkFn tiles run with.
    side1, side2: the two sides of the kernel.
    params: the parameters.
    t1, t2: the tile shape (at most the batch sizes).
    same_inputs: a diagonal tile of a kernel with x2 = x1
      (``ntk(x1_tile, None)``).

  Returns:
    ``jax.stages.Compiled`` of ``ntk.execute(ntk.plan(tile), tile)``.
  """
  x1, kw1 = side1.host_tile((0, min(t1, side1.size)), t1)
  if same_inputs:
    a1, a2, kwargs = ntk_arguments(x1, kw1, x1, kw1, True)
  else:
    x2, kw2 = side2.host_tile((0, min(t2, side2.size)), t2)
    a1, a2, kwargs = ntk_arguments(x1, kw1, x2, kw2, False)
  plan = ntk.plan(a1, a2, params, **kwargs)
  return ntk.lower(plan, a1, a2, params, kwargs).compile()


def tile_peak_bytes(ntk: NtkFn, side1: Side, side2: Side, params: PyTree,
                    t1: int, t2: int, same_inputs: bool) -> int:
  """Peak memory of one tile's compiled program in bytes (0: unknown)."""
  compiled = tile_program(ntk, side1, side2, params, t1, t2, same_inputs)
  return int(hlo.analyse_compiled(compiled).peak_memory or 0)


def _tiles(n1: int, n2: int, t: int, square: bool) -> int:
  r, c = math.ceil(n1 / t), math.ceil(n2 / t)
  return r * (r + 1) // 2 if square and n1 == n2 else r * c


def _kinds(n1: int, t: int, symmetric: bool, matched: bool) -> list[bool]:
  """Kinds of tile (``same_inputs``) a grid of tile ``t`` holds."""
  if not symmetric:
    return [False]
  if matched or t >= n1:
    return [True]
  return [False, True]


def choose_tile(ntk: NtkFn, side1: Side, side2: Side, params: PyTree,
                n1: int, n2: int, *, devices: int, budget: int,
                symmetric: bool, matched: bool) -> tuple[int, int]:
  """The tile ``(t1, t2)`` for ``tile="auto"``.

  Args:
    ntk: the NtkFn tiles run with.
    side1, side2: the two sides of the kernel.
    params: the parameters.
    n1, n2: the batch sizes.
    devices: devices the tiles run on (small kernels get at least as many
      tiles).
    budget: bytes per device.
    symmetric: x2 is x1.
    matched: the batch axis is diagonal or traced.

  Raises:
    MemoryError: not even a 1 × 1 tile fits ``budget``.
  """
  square = symmetric or matched
  cap = min(MAX_TILE, max(n1, n2))
  # Keep every device busy when the kernel is small.
  while cap > 1 and _tiles(n1, n2, cap, square) < devices:
    cap = math.ceil(cap / 2)

  def peak(t: int, kinds: list[bool]) -> int:
    return max(tile_peak_bytes(ntk, side1, side2, params, min(t, n1),
                               min(t, n2), same) for same in kinds)

  t = cap
  probes = [p for p in (4, 8, 16) if p <= cap]
  if len(probes) == 3:
    # The fit follows the largest kind of tile only: cross tiles when any.
    ys = [peak(p, _kinds(n1, p, symmetric, matched)[:1]) for p in probes]
    coef = np.polyfit(probes, ys, 2)
    while t > 16 and np.polyval(coef, t) > budget:
      t //= 2
  while peak(t, _kinds(n1, t, symmetric, matched)) > budget:
    if t == 1:
      raise MemoryError(
          f"One example pair needs more than `memory_budget`={budget} bytes "
          "per device; raise it or use a plan with less memory.")
    t = max(1, t // 2)
  return min(t, n1), min(t, n2)
