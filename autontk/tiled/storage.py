"""Where finished tiles go: an in-memory array or ``.npy`` files on disk.

On disk, a run is a directory::

    meta.json         what is being computed (shapes, grid, fingerprint)
    kernel_<i>.npy    one NumPy array per output leaf (np.load(mmap_mode="r"))
    manifest.jsonl    one line per finished tile, appended after its data is
                      written and fsync'ed: a tile is done only when it is
                      durably on disk
    plans.json        the plans the run started with (a resumed run and
                      every process use them), in autontk's plan codec

Tiles are written with ``os.pwrite`` of their exact byte ranges, so writers
(threads, processes, hosts on a shared file system) that hold distinct tiles
never touch each other's bytes, and a writer's memory does not grow with the
file. Manifest lines are appended under an exclusive ``flock`` in a single
``write`` call; a line torn by a kill is ignored when read back (that tile is
recomputed).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import time
import warnings
from typing import Any, Sequence

import jax
import numpy as np

from autontk._batch_geometry import BatchLayout, Cell, mirror_perm
from autontk._plan import plan_from_dict, plan_to_dict
from autontk._types import PyTree

MANIFEST = "manifest.jsonl"
PLANS = "plans.json"
_PLAN_KINDS = {True: "same_inputs", False: "cross"}
META = "meta.json"
FORMAT = "autontk-tiled/1"


@dataclasses.dataclass(frozen=True)
class LeafSpec:
  """One stored kernel: its shape, dtype and batch-axis layout.

  Attributes:
    shape: the stored kernel's shape (a traced batch axis is stored
      diagonal: the per-example kernel).
    dtype: its dtype.
    layout: where its batch axis sits (in the stored kernel's axes).
  """

  shape: tuple[int, ...]
  dtype: np.dtype
  layout: BatchLayout

  def region(self, tile: Cell, mirrored: bool = False) -> tuple[slice, ...]:
    """Index of ``tile`` (of its mirror image) in the stored kernel."""
    if mirrored:
      return self.layout.index(tile.cols, tile.rows, len(self.shape))
    return self.layout.index(tile.rows, tile.cols, len(self.shape))

  def mirror(self, part: np.ndarray) -> np.ndarray:
    """A tile's kernel as Θ(x2, x1): what lands at its mirror image."""
    return part.transpose(mirror_perm(self.layout.axes))


class MemoryStore:
  """Kernels held in host memory (no manifest: nothing to resume)."""

  def __init__(self, leaves: Sequence[LeafSpec]):
    self.leaves = list(leaves)
    self.arrays = [np.zeros(s.shape, s.dtype) for s in self.leaves]

  def done(self) -> set[tuple[int, int]]:
    return set()

  def write(self, items: Sequence[tuple[Cell, Sequence[np.ndarray]]]) -> None:
    for tile, parts in items:
      for spec, arr, part in zip(self.leaves, self.arrays, parts):
        arr[spec.region(tile)] = part
        if tile.mirrored:
          arr[spec.region(tile, True)] = spec.mirror(part)

  def result(self) -> list[np.ndarray]:
    return self.arrays


class DiskStore:
  """Kernels in ``.npy`` files under ``path``, with a manifest of tiles."""

  def __init__(self, path: str | os.PathLike, leaves: Sequence[LeafSpec],
               process_index: int = 0):
    self.path = os.fspath(path)
    self.leaves = list(leaves)
    self.process_index = process_index
    self.files = [os.path.join(self.path, f"kernel_{i}.npy")
                  for i in range(len(self.leaves))]
    self._offsets: list[int] | None = None

  # Creation and validation --------------------------------------------------

  def create(self, meta: dict[str, Any], resume: bool) -> None:
    """Prepares the directory (one process only): keeps a matching run.

    Raises:
      ValueError: ``resume=True`` and ``path`` holds a different computation.
    """
    old = read_meta(self.path)
    if old is not None and resume:
      check_meta(old, meta, self.path)
      if all(os.path.exists(f) for f in self.files):
        return
    os.makedirs(self.path, exist_ok=True)
    for name in (META, MANIFEST, PLANS):
      if os.path.exists(os.path.join(self.path, name)):
        os.remove(os.path.join(self.path, name))
    for spec, fname in zip(self.leaves, self.files):
      mm = np.lib.format.open_memmap(fname, mode="w+", dtype=spec.dtype,
                                     shape=spec.shape)
      del mm  # sparse file of the right size; tiles fill it
    open(os.path.join(self.path, MANIFEST), "ab").close()
    _fsync_dir(self.path)
    tmp = os.path.join(self.path, META + ".tmp")
    with open(tmp, "w") as fh:
      json.dump(meta, fh, indent=1, sort_keys=True)
      fh.flush()
      os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(self.path, META))  # written last: complete
    _fsync_dir(self.path)

  def attach(self, meta: dict[str, Any]) -> None:
    """Checks that the directory holds this computation (every process)."""
    old = read_meta(self.path)
    if old is None:
      raise FileNotFoundError(
          f"`out`={self.path!r} has no {META}; the process that creates it "
          "(process 0) did not finish setting it up.")
    check_meta(old, meta, self.path)

  # Tiles --------------------------------------------------------------------

  def done(self) -> set[tuple[int, int]]:
    """Keys of the tiles recorded as finished."""
    keys = set()
    try:
      with open(os.path.join(self.path, MANIFEST), "rb") as fh:
        for line in fh:
          try:
            rec = json.loads(line)
            keys.add((int(rec["tile"][0]), int(rec["tile"][1])))
          except (ValueError, KeyError, TypeError, IndexError):
            continue  # a line torn by a killed writer: recompute that tile
    except FileNotFoundError:
      pass
    return keys

  def offsets(self) -> list[int]:
    if self._offsets is None:
      self._offsets = []
      for spec, fname in zip(self.leaves, self.files):
        mm = np.load(fname, mmap_mode="r")
        if mm.shape != spec.shape or mm.dtype != spec.dtype:
          raise ValueError(f"{fname} holds {mm.shape} {mm.dtype}; expected "
                           f"{spec.shape} {spec.dtype}.")
        self._offsets.append(int(mm.offset))
        del mm
    return self._offsets

  def write(self, items: Sequence[tuple[Cell, Sequence[np.ndarray]]]) -> None:
    """Writes tiles, syncs them to disk, then records them in the manifest."""
    if not items:
      return
    for spec, fname, offset, i in zip(self.leaves, self.files, self.offsets(),
                                      range(len(self.leaves))):
      fd = os.open(fname, os.O_WRONLY)
      try:
        for tile, parts in items:
          part = np.asarray(parts[i], spec.dtype)
          _pwrite_region(fd, offset, spec.shape, spec.region(tile), part)
          if tile.mirrored:
            _pwrite_region(fd, offset, spec.shape, spec.region(tile, True),
                           spec.mirror(part))
        os.fsync(fd)
      finally:
        os.close(fd)
    lines = "".join(
        json.dumps({"tile": list(t.key), "process": self.process_index,
                    "time": round(time.time(), 3)}) + "\n" for t, _ in items)
    append_locked(os.path.join(self.path, MANIFEST), lines.encode())

  def result(self) -> list[np.ndarray]:
    return [np.load(f, mmap_mode="r") for f in self.files]

  # Plans --------------------------------------------------------------------

  def save_plans(self, plans: dict[bool, Any]) -> None:
    """Records the run's plans (per kind of tile: x2 = x1 or not)."""
    doc = {_PLAN_KINDS[same]: plan_to_dict(plan)
           for same, plan in plans.items()}
    tmp = os.path.join(self.path, PLANS + ".tmp")
    with open(tmp, "w") as fh:
      json.dump(doc, fh, sort_keys=True)
      fh.flush()
      os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(self.path, PLANS))

  def load_plans(self) -> dict[bool, Any] | None:
    """The recorded plans, or ``None`` (the run then plans again)."""
    try:
      with open(os.path.join(self.path, PLANS)) as fh:
        doc = json.load(fh)
      return {same: plan_from_dict(doc[kind])
              for same, kind in _PLAN_KINDS.items() if kind in doc}
    except FileNotFoundError:
      return None
    except (ValueError, KeyError, TypeError) as e:
      warnings.warn(f"ntk_tiled: the recorded plans cannot be read ({e}); "
                    "planning again.", stacklevel=3)
      return None


def _pwrite_region(fd: int, offset: int, shape: Sequence[int],
                   index: tuple[slice, ...], part: np.ndarray) -> None:
  """Writes ``part`` into ``array[index]`` of a C-ordered array in ``fd``.

  The region is split into maximal contiguous runs: everything after the
  last sliced axis is contiguous, as is that axis' range.
  """
  ranges = [s.indices(n) for s, n in zip(index, shape)]
  partial = [k for k, (a, b, _), n in zip(range(len(shape)), ranges, shape)
             if (a, b) != (0, n)]
  last = partial[-1] if partial else 0
  part = np.ascontiguousarray(part)
  if part.shape != tuple(b - a for a, b, _ in ranges):
    raise ValueError(f"Tile of shape {part.shape} does not fit region "
                     f"{index} of {tuple(shape)}.")
  strides = np.cumprod((list(shape[1:]) + [1])[::-1])[::-1]
  itemsize = part.dtype.itemsize
  for prefix in np.ndindex(*part.shape[:last]):
    start = [ranges[k][0] + p for k, p in enumerate(prefix)]
    start += [r[0] for r in ranges[last:]]
    pos = offset + int(np.dot(start, strides)) * itemsize
    os.pwrite(fd, part[prefix].tobytes(), pos)


def append_locked(path: str, data: bytes) -> None:
  """Appends ``data`` durably under an exclusive lock, in one write."""
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
      os.write(fd, data)
      os.fsync(fd)
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


def read_meta(path: str) -> dict[str, Any] | None:
  try:
    with open(os.path.join(path, META)) as fh:
      return json.load(fh)
  except FileNotFoundError:
    return None


def check_meta(old: dict[str, Any], new: dict[str, Any], path: str) -> None:
  if old == new:
    return
  keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  raise ValueError(
      f"`out`={path!r} holds a different computation (differs in "
      f"{', '.join(keys)}); pass resume=False to overwrite it, or another "
      "`out` path.")


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def fingerprint(*trees: PyTree) -> str:
  """A hash of the shapes, dtypes and values of ``trees`` (guards resumes).

  Arrays are hashed in blocks of rows: a memory-mapped dataset may exceed
  memory. Typed PRNG keys are hashed by their key data; other leaves by
  their ``repr``.
  """
  h = hashlib.blake2b(digest_size=16)
  for tree in trees:
    leaves, td = jax.tree.flatten(tree)
    h.update(str(td).encode())
    for v in leaves:
      if isinstance(v, (jax.Array, np.ndarray, np.generic)):
        _hash_array(h, v)
      else:
        h.update(repr(v).encode())
  return h.hexdigest()


def _hash_array(h: Any, v: Any) -> None:
  if isinstance(v, jax.Array) and jax.dtypes.issubdtype(
      v.dtype, jax.dtypes.extended):
    v = jax.random.key_data(v)
  a = np.asarray(v)
  h.update(f"{a.shape}{a.dtype}".encode())
  if a.size == 0:
    return
  flat = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)
  rows = max(1, (64 << 20) // max(1, flat[:1].nbytes))
  for i in range(0, flat.shape[0], rows):
    block = np.ascontiguousarray(flat[i:i + rows])
    h.update(memoryview(block.reshape(-1)).cast("B"))
