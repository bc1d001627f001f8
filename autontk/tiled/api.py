"""``ntk_tiled``: the NTK of a whole dataset, tile by tile.

The kernel is cut into tiles (:mod:`autontk.tiled.tiling`); tiles run in
groups of one per device on every process (:mod:`autontk.tiled.distributed`),
each with the plan that ``ntk.plan`` chooses for the tile shape, and land in
memory or in ``.npy`` files with a manifest that makes the run resumable
(:mod:`autontk.tiled.storage`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import os
from typing import Any, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from autontk import _kwargs
from autontk._ntk_fn import NtkFn
from autontk._problem import NtkProblem
from autontk._types import PyTree
from autontk.tiled import batch as _batch
from autontk.tiled import distributed, storage
from autontk.tiled.autotile import (choose_tile, host_available_bytes,
                                    memory_budget_bytes)
from autontk.tiled.tiling import LeafLayout, Tile, TileGrid


def _reject_rng(kwargs: dict[str, Any]) -> None:
  if "rng" in kwargs:
    raise ValueError(
        "ntk_tiled does not take the kwarg `rng`: ntk_fn derives x2's key "
        "from the whole batch (fold_in when x2 differs from x1), which tiles "
        "cannot reproduce, and f's randomness over a batch generally depends "
        "on the batch size. Pass per-example keys as a batched kwarg under "
        "another name (with vmap_axes=(in, out, {name: 0})), or make f "
        "deterministic.")


def _matched_ntk(ntk: NtkFn, problem: NtkProblem,
                 out_axes: Sequence[int]) -> tuple[NtkFn, str]:
  """The NtkFn tiles run with, and the batch axis' kind.

  A traced batch axis is computed as a diagonal one (and summed at the end),
  so each tile's examples are traced exactly once.
  """
  kinds = []
  for ax, b in zip(problem.axes, out_axes):
    kinds.append("traced" if b in ax.trace else
                 "diagonal" if b in ax.diagonal else "pairwise")
  if len(set(kinds)) != 1:
    raise ValueError(
        f"The batch axis is {', '.join(kinds)} in the output leaves; "
        "ntk_tiled needs it traced, diagonal or neither in every leaf "
        "(check trace_axes, diagonal_axes and vmap_axes).")
  kind = kinds[0]
  if kind != "traced":
    return ntk, kind
  opts = ntk.options
  entries = set()
  for o, b in zip(problem.out1, out_axes):
    hits = [k for k, a in enumerate(opts.trace_axes) if a % len(o.shape) == b]
    entries.add(hits[0])
  if len(entries) != 1:
    raise ValueError(
        f"trace_axes={opts.trace_axes} names the batch axis by different "
        "entries in different output leaves; name it the same way (e.g. 0) "
        "for ntk_tiled.")
  k = entries.pop()
  changes = dict(
      trace_axes=opts.trace_axes[:k] + opts.trace_axes[k + 1:],
      diagonal_axes=opts.diagonal_axes + (opts.trace_axes[k],))
  derived = _cache(ntk, "derived")
  key = repr(changes)
  if key not in derived:
    derived[key] = ntk.replace(**changes)
  return derived[key], kind


def _fingerprint(*trees: PyTree) -> str:
  h = hashlib.blake2b(digest_size=16)
  for tree in trees:
    leaves, td = jax.tree.flatten(tree)
    h.update(str(td).encode())
    for v in leaves:
      if isinstance(v, (jax.Array, np.ndarray, np.generic)):
        if isinstance(v, jax.Array) and jax.dtypes.issubdtype(
            v.dtype, jax.dtypes.extended):
          v = jax.random.key_data(v)
        a = np.asarray(v)
        h.update(f"{a.shape}{a.dtype}".encode())
        if a.size == 0:
          continue
        # In blocks of rows: a memory-mapped dataset may exceed memory.
        flat = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)
        rows = max(1, (64 << 20) // max(1, flat[:1].nbytes))
        for i in range(0, flat.shape[0], rows):
          block = np.ascontiguousarray(flat[i:i + rows])
          h.update(memoryview(block.reshape(-1)).cast("B"))
      else:
        h.update(repr(v).encode())
  return h.hexdigest()


def _parse_tile(tile: Any, n1: int, n2: int,
                square: bool) -> tuple[int, int] | None:
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
  if square:
    if t1 != t2:
      raise ValueError(
          f"`tile` must be square when x2 is None or the batch axis is "
          f"diagonal/traced (tiles sit on the diagonal); got {tile!r}.")
    t1 = t2 = min(t1, max(n1, n2))
  return min(t1, n1), min(t2, n2)


def _stored_tile(out: Any, n1: int, n2: int, symmetric: bool,
                 matched: bool) -> tuple[int, int] | None:
  """The tile of a resumable run at ``out`` (auto tiles may vary by run)."""
  grid = (storage.read_meta(os.fspath(out)) or {}).get("grid", {})
  if (grid.get("n1"), grid.get("n2"), grid.get("symmetric"),
      grid.get("matched")) == (n1, n2, symmetric, matched):
    return int(grid["t1"]), int(grid["t2"])
  return None


def _call_args(x1, kw1, x2, kw2, same: bool):
  kwargs = {k: (kw1[k], kw2[k]) for k in kw1}
  return x1, (None if same else x2), kwargs


def _cache(ntk: NtkFn, name: str) -> dict:
  """A dict living on ``ntk``: compiled programs die with their NtkFn, as its
  own executables do (a module-level map would keep every NtkFn alive)."""
  return vars(ntk).setdefault(f"_tiled_{name}", {})


def _program(ntk: NtkFn, plan: Any, same: bool, cluster, skel1, skel2,
             param_static: Any):
  """The SPMD program of one kind of tile; it takes the params' traced
  leaves (``_kwargs.split_params``), their Python constants are closed
  over."""
  def body(p_dyn, batched, shared):
    params = _kwargs.merge_static(p_dyn, param_static)
    n1, s1 = len(skel1.batched), len(skel1.shared)
    x1, kw1 = skel1.assemble(batched[:n1], shared[:s1])
    if same:
      a1, a2, kw = _call_args(x1, kw1, x1, kw1, True)
    else:
      x2, kw2 = skel2.assemble(batched[n1:], shared[s1:])
      a1, a2, kw = _call_args(x1, kw1, x2, kw2, False)
    return jax.tree.leaves(ntk.execute(plan, a1, a2, params, **kw))

  key = (plan, same, tuple(cluster.mesh.devices.flat), skel1, skel2,
         param_static)
  try:
    hash(key)
  except TypeError:
    return distributed.spmd_program(body, cluster)
  cache = _cache(ntk, "programs")
  if key not in cache:
    cache[key] = distributed.spmd_program(body, cluster)
  return cache[key]


class _Run:
  """One ``ntk_tiled`` call: the sides, the grid, the programs and the store."""

  def __init__(self, ntk: NtkFn, problem: NtkProblem, side1, side2,
               grid: TileGrid, cluster: distributed.Cluster, params: PyTree):
    self.ntk, self.problem = ntk, problem
    self.side1, self.side2 = side1, side2
    self.grid, self.cluster = grid, cluster
    self.params = params
    self._params_dyn, self._param_static = _kwargs.split_params(params)
    self._programs: dict[bool, Any] = {}
    self.fixed_plans: dict[bool, Any] = {}
    self._params_dev = None
    self._shared_dev: dict[int, list[jax.Array]] = {}

  def host_tile(self, tile: Tile):
    x1, kw1 = self.side1.host_tile(tile.rows, self.grid.t1)
    if tile.same_inputs:
      return _call_args(x1, kw1, x1, kw1, True)
    x2, kw2 = self.side2.host_tile(tile.cols, self.grid.t2)
    return _call_args(x1, kw1, x2, kw2, False)

  def plans(self) -> dict[bool, Any]:
    """The planner's choice for each kind of tile the grid holds."""
    out = {}
    for tile in self.grid.tiles():
      if tile.same_inputs not in out:
        x1, x2, kwargs = self.host_tile(tile)
        out[tile.same_inputs] = self.ntk.plan(x1, x2, self.params, **kwargs)
    return out

  def program(self, same: bool):
    """The compiled group program of self (``same``) or cross tiles."""
    if same not in self._programs:
      if same not in self.fixed_plans:
        self.fixed_plans.update(self.plans())
      self._programs[same] = _program(
          self.ntk, self.fixed_plans[same], same, self.cluster,
          self.side1.skeleton, None if same else self.side2.skeleton,
          self._param_static)
    return self._programs[same]

  def _sides(self, same: bool):
    return (self.side1,) if same else (self.side1, self.side2)

  def dispatch(self, group: Sequence[Tile]) -> list[jax.Array]:
    """Starts one group (asynchronously): one tile per device."""
    same = group[0].same_inputs
    program = self.program(same)
    if self._params_dev is None:
      self._params_dev = distributed.replicated_input(self.cluster,
                                                      self._params_dyn)
    if same not in self._shared_dev:
      shared = [s.leaves[i] for s in self._sides(same) for i in s.shared]
      self._shared_dev[same] = distributed.replicated_input(self.cluster,
                                                            shared)
    slots = list(group) + [group[0]] * (self.cluster.size - len(group))
    batched = []
    for s, size, span in zip(self._sides(same),
                             (self.grid.t1, self.grid.t2), ("rows", "cols")):
      for i in s.batched:
        batched.append(distributed.stacked_input(
            self.cluster, s.tile_shape(i, size), np.result_type(s.leaves[i]),
            lambda d, s=s, i=i, size=size, span=span: s.tile_leaf(
                i, getattr(slots[d], span), size)))
    return program(self._params_dev, batched, self._shared_dev[same])


def _groups(tiles: Sequence[Tile], size: int) -> list[list[Tile]]:
  out = []
  for same in (True, False):
    kind = [t for t in tiles if t.same_inputs is same]
    out.extend(kind[i:i + size] for i in range(0, len(kind), size))
  return out


def ntk_tiled(ntk: NtkFn, x1: PyTree, x2: PyTree | None, params: PyTree, *,
              tile: int | tuple[int, int] | str = "auto",
              out: str | os.PathLike | None = None, resume: bool = True,
              devices: Sequence[Any] | None = None, progress: bool = True,
              memory_budget: int | None = None, **kwargs: Any) -> PyTree:
  """Computes ``ntk(x1, x2, params, **kwargs)`` tile by tile.

  The N1 × N2 kernel is cut into tiles of ``t1 × t2`` examples (the last ones
  may be smaller). Tiles are spread over ``devices`` (default: all devices of
  all processes) with ``jax.shard_map``, each with the plan ``ntk.plan``
  chooses for the tile shape, and written to memory or to disk as they
  finish. With ``x2=None`` only the upper triangle is computed and mirrored.
  A diagonal batch axis (``diagonal_axes`` containing it) computes only the
  diagonal tiles; a traced batch axis computes them as diagonals and sums.

  The batch axis is the one ``vmap_axes`` of ``ntk`` names; without it,
  axis 0 of every leaf of x and of every output leaf. f must treat examples
  independently (a tile is f applied to a slice of the batch). kwargs are
  split as by ``ntk`` (2-tuples per side) and are shared by every tile unless
  ``vmap_axes`` gives them a batch axis; ``rng`` is rejected (its split
  depends on the whole batch).

  Several processes (``jax.distributed.initialize``; on CPU set
  ``jax_cpu_collectives_implementation`` to ``"gloo"``) each call
  ``ntk_tiled`` with the same arguments and an ``out`` path on a shared file
  system; each computes and writes its devices' tiles.

  Args:
    ntk: the kernel function, from :func:`autontk.ntk_fn`.
    x1: inputs, batch size N1 along the batch axis.
    x2: inputs (batch size N2), or ``None`` for ``x1`` (upper triangle only).
    params: the parameters.
    tile: examples per tile, ``t`` or ``(t1, t2)`` (square when x2 is None
      or the batch axis is diagonal/traced), or ``"auto"``: the largest tile
      whose compiled program fits ``memory_budget`` per device.
    out: a directory for the result (``kernel_<i>.npy`` per output leaf,
      ``manifest.jsonl``, ``meta.json``), or ``None`` to keep it in memory.
    resume: with ``out``, keep the tiles a previous run of the same
      computation finished; ``False`` starts over.
    devices: the devices to use (one process only), default all.
    progress: show a progress bar (rate and ETA) on process 0.
    memory_budget: bytes per device for ``tile="auto"`` (default: half the
      available memory of the device, or of the host shared by its CPU
      devices).
    **kwargs: keyword arguments of ``f``.

  Returns:
    The kernel (a pytree of kernels for pytree outputs), laid out as by
    ``ntk``: NumPy arrays in memory, or read-only ``np.memmap`` views of
    ``out``'s files. A traced batch axis gives in-memory arrays; ``out`` then
    holds the per-example (diagonal) kernels they are summed from.

  >>> import jax.numpy as jnp, autontk
  >>> f = lambda p, x: jnp.tanh(x @ p)
  >>> ntk = autontk.ntk_fn(f, vmap_axes=0)
  >>> x = jnp.arange(15.).reshape(5, 3) / 10
  >>> k = autontk.ntk_tiled(ntk, x, None, jnp.ones((3, 2)), tile=2,
  ...                       progress=False)
  >>> k.shape
  (5, 5)
  """
  if not isinstance(ntk, NtkFn):
    raise TypeError(f"`ntk` must come from autontk.ntk_fn; got "
                    f"{type(ntk).__name__}.")
  _reject_rng(kwargs)
  problem = ntk.problem(x1, x2, params, **kwargs)
  side1, side2 = _batch.sides(problem)
  n1, n2 = side1.size, side2.size
  out_axes = _batch.output_batch_axes(problem, n1, n2)
  inner, kind = _matched_ntk(ntk, problem, out_axes)
  inner_problem = (problem if inner is ntk else
                   inner.problem(x1, x2, params, **kwargs))
  matched = kind != "pairwise"
  # x2 passed as the very same object as x1 is symmetric too, unless a
  # 2-tuple kwarg gives the two sides different arguments.
  symmetric = x2 is None or (x2 is x1 and not any(
      isinstance(v, tuple) and len(v) == 2 for v in kwargs.values()))
  cluster = distributed.make_cluster(devices)
  if cluster.process_count > 1 and out is None:
    raise ValueError("With several processes, pass `out` (a directory on a "
                     "file system all processes share).")

  layouts = [LeafLayout.of(ax, b) for ax, b in zip(inner_problem.axes,
                                                   out_axes)]
  specs = [storage.LeafSpec(inner_problem.kernel_shape(i),
                            np.dtype(inner_problem.kernel_dtype(i)), lay)
           for i, lay in enumerate(layouts)]

  ts = _parse_tile(tile, n1, n2, symmetric or matched)
  if ts is None and out is not None and resume:
    ts = _stored_tile(out, n1, n2, symmetric, matched)
  if ts is None:
    budget = (memory_budget if memory_budget is not None else
              memory_budget_bytes(cluster.mesh.devices.flat[0]))
    ts = choose_tile(inner, side1, side2, params, n1, n2,
                     square=symmetric or matched, devices=cluster.size,
                     budget=budget, same_inputs=symmetric and matched)
  # An automatic or stored tile can differ between hosts (free memory, a
  # meta.json read while process 0 rewrites it): process 0's choice wins.
  ts = cluster.from_process_0(tuple(ts))
  grid = TileGrid(n1, n2, ts[0], ts[1], symmetric, matched)
  run = _Run(inner, inner_problem, side1, side2, grid, cluster, params)

  if out is None:
    need = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in specs)
    limit, what = ((memory_budget, "`memory_budget`")
                   if memory_budget is not None else
                   (host_available_bytes(), "the host's available memory"))
    if need > limit:
      raise ValueError(
          f"The kernel needs {need / 2**30:.2f} GiB, more than {what} "
          f"({limit / 2**30:.2f} GiB); pass `out` (a directory) to stream "
          "it to disk.")
    store: Any = storage.MemoryStore(specs)
  else:
    store = storage.DiskStore(out, specs, cluster.process_index)
    meta = json.loads(json.dumps({
        "format": storage.FORMAT,
        # The name, not the module: a script may be resumed as __main__.
        "function": getattr(ntk.f, "__qualname__", type(ntk.f).__name__),
        "options": repr((ntk.options.trace_axes, ntk.options.diagonal_axes,
                         ntk.options.vmap_axes)),
        "leaves": [{"shape": list(s.shape), "dtype": s.dtype.str}
                   for s in specs],
        "grid": grid.to_json(),
        "data": _fingerprint(params, side1.leaves, side2.leaves),
    }))
    if cluster.process_index == 0:
      store.create(meta, resume)
      if store.load_plans() is None:
        store.save_plans(run.plans())
    cluster.barrier("created")
    store.attach(meta)
    # Every process, and every resumed run, uses the plans the run started
    # with: a planner that changed its mind would change the tiles' bits.
    run.fixed_plans.update(store.load_plans() or {})

  finished = store.done()
  cluster.barrier("manifest-read")
  tiles = grid.tiles()
  todo = [t for t in tiles if t.key not in finished]
  cluster.agree(len(todo), "the number of tiles left")
  _compute(run, store, todo, len(tiles), progress)
  cluster.barrier("finished")

  kernels = store.result()
  if kind == "traced":
    kernels = [_sum_batch(k, lay, n1) for k, lay in zip(kernels, layouts)]
  return jax.tree.unflatten(problem.out_treedef, kernels)


def _compute(run: _Run, store: Any, todo: Sequence[Tile], total: int,
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
                        writer.submit(_finish, run, store, group, outs)))
        drain(keep=2)
      drain(keep=0)
    finally:
      for _, future in pending:
        future.cancel()
      bar.close()


def _finish(run: _Run, store: Any, group: Sequence[Tile],
            outs: Sequence[jax.Array]) -> None:
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


def _sum_batch(kernel: np.ndarray, layout: LeafLayout, n: int) -> np.ndarray:
  """Traced batch axis: mean over the per-example (diagonal) kernel."""
  total = np.sum(np.asarray(kernel), axis=layout.position, dtype=np.float64)
  return (total / n).astype(kernel.dtype)


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
  grid = TileGrid(**meta["grid"])
  keys = {t.key for t in grid.tiles()}
  done = storage.DiskStore(out, []).done() & keys
  return {"done": len(done), "total": len(keys), "tile": (grid.t1, grid.t2),
          "complete": len(done) == len(keys)}
