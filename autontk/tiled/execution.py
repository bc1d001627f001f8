"""Running the tiles of one ``ntk_tiled`` call: plans, groups, writing.

Tiles run in groups of one per device (:mod:`autontk.tiled.distributed`),
each kind of tile (x2 = x1 or not) with the plan ``ntk.plan`` chooses for
the tile shape; a writer thread stores finished groups while the next ones
compute.
"""

from __future__ import annotations

import collections
import concurrent.futures
from typing import Any, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from autontk import _kwargs
from autontk._batch_geometry import BatchGrid, Cell
from autontk._kernel_fn import NtkFn
from autontk._types import PyTree
from autontk.tiled import distributed, programs
from autontk.tiled.batch import Side, ntk_arguments


class TileRun:
  """The tiles of one call: their plans, programs and device inputs.

  Attributes:
    ntk: the NtkFn tiles run with.
    side1, side2: the two sides of the kernel.
    grid: the tile grid.
    cluster: the devices.
    params: the parameters.
    fixed_plans: plans given from outside (a run on disk records them), per
      kind of tile (``True``: x2 = x1); the planner fills in the others.
  """

  def __init__(self, ntk: NtkFn, side1: Side, side2: Side, grid: BatchGrid,
               cluster: distributed.Cluster, params: PyTree):
    self.ntk = ntk
    self.side1, self.side2 = side1, side2
    self.grid, self.cluster = grid, cluster
    self.params = params
    self._params_dyn, self._param_static = _kwargs.split_params(params)
    self._programs: dict[bool, Any] = {}
    self.fixed_plans: dict[bool, Any] = {}
    self._params_dev = None
    self._shared_dev: dict[bool, list[jax.Array]] = {}

  def host_tile(self, tile: Cell) -> tuple[PyTree, PyTree | None,
                                           dict[str, Any]]:
    """``(x1, x2, kwargs)`` of ``tile`` as ``ntk`` takes them, on the host."""
    x1, kw1 = self.side1.host_tile(tile.rows, self.grid.t1)
    if tile.same_inputs:
      return ntk_arguments(x1, kw1, x1, kw1, True)
    x2, kw2 = self.side2.host_tile(tile.cols, self.grid.t2)
    return ntk_arguments(x1, kw1, x2, kw2, False)

  def plans(self) -> dict[bool, Any]:
    """The planner's choice for each kind of tile the grid holds."""
    out = {}
    for tile in self.grid.cells():
      if tile.same_inputs not in out:
        x1, x2, kwargs = self.host_tile(tile)
        out[tile.same_inputs] = self.ntk.plan(x1, x2, self.params, **kwargs)
    return out

  def program(self, same: bool):
    """The compiled group program of self (``same``) or cross tiles."""
    if same not in self._programs:
      if same not in self.fixed_plans:
        self.fixed_plans.update(self.plans())
      self._programs[same] = programs.group_program(
          self.ntk, self.fixed_plans[same], same, self.cluster,
          self.side1.skeleton, None if same else self.side2.skeleton,
          self._param_static)
    return self._programs[same]

  def _sides(self, same: bool) -> tuple[Side, ...]:
    return (self.side1,) if same else (self.side1, self.side2)

  def _replicated(self, same: bool) -> tuple[Any, list[jax.Array]]:
    """The params' traced leaves and the shared leaves, on every device."""
    if self._params_dev is None:
      self._params_dev = distributed.replicated_input(self.cluster,
                                                      self._params_dyn)
    if same not in self._shared_dev:
      shared = [s.leaves[i] for s in self._sides(same) for i in s.shared]
      self._shared_dev[same] = distributed.replicated_input(self.cluster,
                                                            shared)
    return self._params_dev, self._shared_dev[same]

  def dispatch(self, group: Sequence[Cell]) -> list[jax.Array]:
    """Starts one group (asynchronously): one tile per device."""
    same = group[0].same_inputs
    program = self.program(same)
    params, shared = self._replicated(same)
    slots = list(group) + [group[0]] * (self.cluster.size - len(group))
    batched = []
    for s, size, span in zip(self._sides(same),
                             (self.grid.t1, self.grid.t2), ("rows", "cols")):
      for i in s.batched:
        batched.append(distributed.stacked_input(
            self.cluster, s.tile_shape(i, size), np.result_type(s.leaves[i]),
            lambda d, s=s, i=i, size=size, span=span: s.tile_leaf(
                i, getattr(slots[d], span), size)))
    return program(params, batched, shared)


def _groups(tiles: Sequence[Cell], size: int) -> list[list[Cell]]:
  """Tiles in groups of ``size`` of one kind (x2 = x1 first)."""
  out = []
  for same in (True, False):
    kind = [t for t in tiles if t.same_inputs is same]
    out.extend(kind[i:i + size] for i in range(0, len(kind), size))
  return out


def compute(run: TileRun, store: Any, todo: Sequence[Cell], total: int,
            progress: bool) -> None:
  """Dispatches groups in order; a writer thread stores finished ones.

  Dispatch is asynchronous on most backends, but not always (several CPU
  devices run a call with freshly transferred inputs synchronously), so
  writing happens on its own thread to overlap computing either way. At most
  two groups wait to be written.
  """
  bar = tqdm(total=total, initial=total - len(todo), unit="tile",
             desc="ntk tiles", dynamic_ncols=True,
             disable=not progress or run.cluster.process_index != 0)
  pending: collections.deque = collections.deque()

  def drain(keep: int) -> None:
    while len(pending) > keep:
      n, future = pending.popleft()
      future.result()  # re-raises a failed write here
      bar.update(n)

  with concurrent.futures.ThreadPoolExecutor(
      1, thread_name_prefix="autontk-tile-writer") as writer:
    try:
      for group in _groups(todo, run.cluster.size):
        outs = run.dispatch(group)
        pending.append((len(group),
                        writer.submit(_finish, store, group, outs)))
        drain(keep=2)
      drain(keep=0)
    finally:
      for _, future in pending:
        future.cancel()
      bar.close()


def _finish(store: Any, group: Sequence[Cell],
            outs: Sequence[jax.Array]) -> None:
  """Crops this process' results of ``group`` and writes them."""
  items = []
  for slot, parts in sorted(distributed.local_results(outs).items()):
    if slot >= len(group):
      continue  # padding slot of the last group
    tile = group[slot]
    rows = tile.rows[1] - tile.rows[0]
    cols = tile.cols[1] - tile.cols[0]
    cropped = [p[spec.layout.crop(rows, cols, p.ndim)]
               for p, spec in zip(parts, store.leaves)]
    items.append((tile, cropped))
  store.write(items)
