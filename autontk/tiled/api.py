"""``ntk_tiled``: the NTK of a whole dataset, tile by tile.

The kernel is cut into tiles (:class:`autontk._batch_geometry.BatchGrid`);
tiles run in groups of one per device on every process
(:mod:`autontk.tiled.execution`, :mod:`autontk.tiled.distributed`), each
with the plan that ``ntk.plan`` chooses for the tile shape, and land in
memory or in ``.npy`` files with a manifest that makes the run resumable
(:mod:`autontk.tiled.storage`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import jax
import numpy as np

from autontk._batch_geometry import (TRACED, BatchGrid, BatchLayout,
                                     mean_over_batch)
from autontk._kernel_fn import NtkFn
from autontk._problem import NtkProblem
from autontk._types import PyTree
from autontk.tiled import batch, distributed, execution, programs, storage
from autontk.tiled.autotile import (choose_tile, host_available_bytes,
                                    memory_budget_bytes)


def ntk_tiled(ntk: NtkFn, x1: PyTree, x2: PyTree | None, params: PyTree, *,
              tile: int | tuple[int, int] | str = "auto",
              out: str | os.PathLike | None = None, resume: bool = True,
              devices: Sequence[Any] | None = None, progress: bool = True,
              memory_budget: int | None = None, **kwargs: Any) -> PyTree:
  """Computes ``ntk(x1, x2, params, **kwargs)`` tile by tile.

  The N1 × N2 kernel is cut into tiles of ``t1 × t2`` examples, spread over
  ``devices`` (default: all devices of all processes), each computed with
  the plan ``ntk.plan`` chooses for the tile shape and written to memory or
  disk as it finishes. With ``x2=None`` only the upper triangle is computed
  and mirrored; a diagonal or traced batch axis computes only the diagonal
  tiles. The batch axis is the one ``vmap_axes`` names (default: axis 0 of
  every input and output leaf); f must treat examples independently. Several
  processes each call ``ntk_tiled`` with the same arguments and an ``out``
  on a shared file system. See ``docs/tiled.md``.

  Args:
    ntk: the kernel function, from :func:`autontk.ntk_fn`.
    x1: inputs, batch size N1 along the batch axis.
    x2: inputs (batch size N2), or ``None`` for ``x1`` (upper triangle only).
    params: the parameters.
    tile: examples per tile, ``t`` or ``(t1, t2)`` (square when x2 is None
      or the batch axis is diagonal/traced), or ``"auto"``: the largest tile
      whose compiled program fits ``memory_budget`` per device.
    out: a directory for the result (``kernel_<i>.npy`` per output leaf,
      or per group and output leaf with ``groups``, group-major;
      ``manifest.jsonl``, ``meta.json``, ``plans.json``), or ``None``.
    resume: with ``out``, keep the tiles a previous run of the same
      computation finished; ``False`` starts over.
    devices: the devices to use (one process only), default all.
    progress: show a progress bar (rate and ETA) on process 0.
    memory_budget: bytes per device for ``tile="auto"`` (default: half the
      available memory of the device, or of the host shared by its CPU
      devices); without ``out``, also the limit on the kernel's size.
    **kwargs: keyword arguments of ``f``, split as by ``ntk``; sliced with
      the tiles when ``vmap_axes`` batches them. ``rng`` is rejected.

  Returns:
    The kernel, laid out as by ``ntk`` (``{group: kernels}`` when ``ntk``
    has ``groups``): NumPy arrays, or read-only
    ``np.memmap`` views of ``out``'s files (a traced batch axis gives arrays
    in memory; ``out`` holds the per-example kernels they average).

  >>> import jax.numpy as jnp, autontk
  >>> ntk = autontk.ntk_fn(lambda p, x: jnp.tanh(x @ p), vmap_axes=0)
  >>> x = jnp.arange(15.).reshape(5, 3) / 10
  >>> autontk.ntk_tiled(ntk, x, None, jnp.ones((3, 2)), tile=2,
  ...                   progress=False).shape
  (5, 5)
  """
  call = _Call.of(ntk, x1, x2, params, kwargs)
  cluster = _cluster(devices, out)
  grid = _grid(call, cluster, tile, out, resume, memory_budget)
  run = execution.TileRun(call.tile_ntk, call.side1, call.side2, grid,
                          cluster, params)
  store = _open_store(call, run, out, resume, memory_budget)
  _compute_missing(run, store, progress)
  return _result(call, store)


@dataclasses.dataclass
class _Call:
  """One ``ntk_tiled`` call, validated: what every step reads.

  Attributes:
    ntk: the caller's NtkFn.
    tile_ntk: the NtkFn tiles run with (a traced batch axis made diagonal).
    problem: the whole call's problem.
    side1, side2: the two sides, with their batch axes.
    layouts: where each output leaf's batch axis sits (in ``ntk``'s axes).
    symmetric: x2 is x1 (upper triangle only).
    params: the parameters.
  """

  ntk: NtkFn
  tile_ntk: NtkFn
  problem: NtkProblem
  side1: batch.Side
  side2: batch.Side
  layouts: list[BatchLayout]
  symmetric: bool
  params: PyTree

  @staticmethod
  def of(ntk: NtkFn, x1: PyTree, x2: PyTree | None, params: PyTree,
         kwargs: dict[str, Any]) -> "_Call":
    if not isinstance(ntk, NtkFn):
      raise TypeError(f"`ntk` must come from autontk.ntk_fn; got "
                      f"{type(ntk).__name__}.")
    _reject_rng(kwargs)
    problem = ntk.problem(x1, x2, params, **kwargs)
    side1, side2 = batch.sides(problem)
    out_axes = batch.output_batch_axes(problem, side1.size, side2.size)
    layouts = _one_kind([BatchLayout(ax, b)
                         for ax, b in zip(problem.axes, out_axes)])
    tile_ntk = programs.tile_ntk(ntk, layouts,
                                 [len(o.shape) for o in problem.out1])
    # x2 passed as the very same object as x1 is symmetric too, unless a
    # 2-tuple kwarg gives the two sides different arguments.
    symmetric = x2 is None or (x2 is x1 and not any(
        isinstance(v, tuple) and len(v) == 2 for v in kwargs.values()))
    return _Call(ntk, tile_ntk, problem, side1, side2, layouts, symmetric,
                 params)

  @property
  def matched(self) -> bool:
    return self.layouts[0].matched

  def leaf_specs(self) -> list[storage.LeafSpec]:
    """The stored kernels, one per output leaf (per group and output leaf
    with ``groups``, group-major); a traced batch axis is stored diagonal."""
    specs = []
    for _, i in self.problem.kernel_slots():
      axes = self.layouts[i].computed_axes
      shape = axes.kernel_shape(self.problem.out1[i].shape,
                                self.problem.out2[i].shape)
      specs.append(storage.LeafSpec(
          shape, np.dtype(self.problem.kernel_dtype(i)),
          BatchLayout(axes, self.layouts[i].batch_axis)))
    return specs


def _reject_rng(kwargs: dict[str, Any]) -> None:
  if "rng" in kwargs:
    raise ValueError(
        "ntk_tiled does not take the kwarg `rng`: ntk_fn derives x2's key "
        "from the whole batch (fold_in when x2 differs from x1), which tiles "
        "cannot reproduce, and f's randomness over a batch generally depends "
        "on the batch size. Pass per-example keys as a batched kwarg under "
        "another name (with vmap_axes=(in, out, {name: 0})), or make f "
        "deterministic.")


def _one_kind(layouts: list[BatchLayout]) -> list[BatchLayout]:
  """``layouts``, checked to hold one kind of batch axis."""
  kinds = [layout.kind for layout in layouts]
  if len(set(kinds)) != 1:
    raise ValueError(
        f"The batch axis is {', '.join(kinds)} in the output leaves; "
        "ntk_tiled needs it traced, diagonal or neither in every leaf "
        "(check trace_axes, diagonal_axes and vmap_axes).")
  return layouts


def _cluster(devices: Sequence[Any] | None,
             out: str | os.PathLike | None) -> distributed.Cluster:
  cluster = distributed.make_cluster(devices)
  if cluster.process_count > 1 and out is None:
    raise ValueError("With several processes, pass `out` (a directory on a "
                     "file system all processes share).")
  return cluster


def _parse_tile(tile: Any, square: bool) -> tuple[int, int] | None:
  """``(t1, t2)`` of the ``tile`` argument, or ``None`` for ``"auto"``."""
  if isinstance(tile, str):
    if tile != "auto":
      raise ValueError(f"`tile` must be 'auto', an int or a pair of ints; "
                       f"got {tile!r}.")
    return None
  if isinstance(tile, (int, np.integer)) and not isinstance(tile, bool):
    t1 = t2 = int(tile)
  else:
    try:
      t1, t2 = (int(t) for t in tile)
    except (TypeError, ValueError):
      raise TypeError(f"`tile` must be 'auto', an int or a pair of ints; got "
                      f"{tile!r}.") from None
  if t1 < 1 or t2 < 1:
    raise ValueError(f"`tile` must be positive; got {tile!r}.")
  if square and t1 != t2:
    raise ValueError(
        f"`tile` must be square when x2 is None or the batch axis is "
        f"diagonal/traced (tiles sit on the diagonal); got {tile!r}.")
  return t1, t2


def _stored_tile(out: Any, n1: int, n2: int, symmetric: bool,
                 matched: bool) -> tuple[int, int] | None:
  """The tile of a resumable run at ``out`` (auto tiles may vary by run)."""
  grid = (storage.read_meta(os.fspath(out)) or {}).get("grid", {})
  if (grid.get("n1"), grid.get("n2"), grid.get("symmetric"),
      grid.get("matched")) == (n1, n2, symmetric, matched):
    return int(grid["t1"]), int(grid["t2"])
  return None


def _grid(call: _Call, cluster: distributed.Cluster, tile: Any,
          out: Any, resume: bool, memory_budget: int | None) -> BatchGrid:
  """The tile grid: the given tile, a resumed run's, or an automatic one."""
  n1, n2 = call.side1.size, call.side2.size
  ts = _parse_tile(tile, call.symmetric or call.matched)
  if ts is None and out is not None and resume:
    ts = _stored_tile(out, n1, n2, call.symmetric, call.matched)
  if ts is None:
    budget = (memory_budget if memory_budget is not None else
              memory_budget_bytes(cluster.mesh.devices.flat[0]))
    ts = choose_tile(call.tile_ntk, call.side1, call.side2, call.params, n1,
                     n2, devices=cluster.size, budget=budget,
                     symmetric=call.symmetric, matched=call.matched)
  # An automatic or stored tile can differ between hosts (free memory, a
  # meta.json read while process 0 rewrites it): process 0's choice wins.
  t1, t2 = cluster.from_process_0(tuple(ts))
  return BatchGrid.fit(n1, n2, t1, t2, call.symmetric, call.matched)


def _meta(call: _Call, grid: BatchGrid,
          specs: Sequence[storage.LeafSpec]) -> dict[str, Any]:
  """What a run on disk computes (``meta.json``; a resume must match it)."""
  ntk = call.ntk
  return json.loads(json.dumps({
      "format": storage.FORMAT,
      # The name, not the module: a script may be resumed as __main__.
      "function": getattr(ntk.f, "__qualname__", type(ntk.f).__name__),
      "options": repr((ntk.options.trace_axes, ntk.options.diagonal_axes,
                       ntk.options.vmap_axes)),
      # wrt, groups, pseudo-NTK and precision change the kernel's values.
      "kernel": call.problem.describe(),
      "groups": list(call.problem.group_names or ()),
      "leaves": [{"shape": list(s.shape), "dtype": s.dtype.str}
                 for s in specs],
      "grid": grid.to_json(),
      "data": storage.fingerprint(call.params, call.side1.leaves,
                                  call.side2.leaves),
  }))


def _memory_store(specs: Sequence[storage.LeafSpec],
                  memory_budget: int | None) -> storage.MemoryStore:
  """The kernel in host memory, if it fits."""
  need = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in specs)
  limit, what = ((memory_budget, "`memory_budget`")
                 if memory_budget is not None else
                 (host_available_bytes(), "the host's available memory"))
  if need > limit:
    raise ValueError(
        f"The kernel needs {need / 2**30:.2f} GiB, more than {what} "
        f"({limit / 2**30:.2f} GiB); pass `out` (a directory) to stream "
        "it to disk.")
  return storage.MemoryStore(specs)


def _open_store(call: _Call, run: execution.TileRun, out: Any, resume: bool,
                memory_budget: int | None) -> Any:
  """Where tiles go; on disk, the run's plans are fixed from here on."""
  specs = call.leaf_specs()
  if out is None:
    return _memory_store(specs, memory_budget)
  cluster = run.cluster
  store = storage.DiskStore(out, specs, cluster.process_index)
  meta = _meta(call, run.grid, specs)
  if cluster.process_index == 0:
    store.create(meta, resume)
    if store.load_plans() is None:
      store.save_plans(run.plans())
  cluster.barrier("created")
  store.attach(meta)
  # Every process, and every resumed run, uses the plans the run started
  # with: a planner that changed its mind would change the tiles' bits.
  run.fixed_plans.update(store.load_plans() or {})
  return store


def _compute_missing(run: execution.TileRun, store: Any,
                     progress: bool) -> None:
  """Computes the tiles ``store`` does not hold yet, on every process."""
  finished = store.done()
  run.cluster.barrier("manifest-read")
  tiles = run.grid.cells()
  todo = [t for t in tiles if t.key not in finished]
  run.cluster.agree(len(todo), "the number of tiles left")
  execution.compute(run, store, todo, len(tiles), progress)
  run.cluster.barrier("finished")


def _result(call: _Call, store: Any) -> PyTree:
  """The stored kernels as ``ntk`` lays them out (a traced batch averaged;
  ``{group: kernels}`` with ``groups``)."""
  kernels = store.result()
  if call.layouts[0].kind == TRACED:
    kernels = [mean_over_batch(np.asarray(k), call.layouts[i].position,
                               call.side1.size)
               for k, (_, i) in zip(kernels, call.problem.kernel_slots())]
  return call.problem.unflatten_kernels(kernels)


def run_status(out: str | os.PathLike) -> dict[str, Any]:
  """How far the run in ``out`` is (read-only; safe while it runs).

  Args:
    out: the directory given to :func:`ntk_tiled`.

  Returns:
    ``{"done": tiles finished, "total": tiles in the grid, "tile": (t1, t2),
    "complete": done == total}``.

  >>> import tempfile, jax.numpy as jnp, autontk
  >>> from autontk.tiled import run_status
  >>> ntk = autontk.ntk_fn(lambda p, x: jnp.tanh(x @ p))
  >>> d = tempfile.mkdtemp()
  >>> _ = autontk.ntk_tiled(ntk, jnp.ones((5, 3)), None, jnp.ones((3, 2)),
  ...                       tile=2, out=d, progress=False)
  >>> run_status(d)["done"], run_status(d)["total"]
  (6, 6)
  """
  meta = storage.read_meta(os.fspath(out))
  if meta is None:
    raise FileNotFoundError(f"`out`={os.fspath(out)!r} holds no ntk_tiled "
                            "run (no meta.json).")
  grid = BatchGrid(**meta["grid"])
  keys = {t.key for t in grid.cells()}
  done = storage.DiskStore(out, []).done() & keys
  return {"done": len(done), "total": len(keys), "tile": (grid.t1, grid.t2),
          "complete": len(done) == len(keys)}
