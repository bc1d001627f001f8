"""Spreading tiles over devices and processes with JAX's own SPMD engine.

Tiles run in *groups* of one tile per device: a group is one call of a
``jax.jit(jax.shard_map(...))`` program over a one-axis :class:`Mesh` whose
inputs are stacked along the mesh axis, so device ``d`` computes tile ``d``
of the group with the same per-device program as every other device. With
several processes (multi-controller JAX, ``jax.distributed.initialize``), the
mesh spans every process' devices; each process builds only its own devices'
inputs (``jax.make_array_from_callback``) and writes only their results, and
all processes step through the same list of groups together.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from autontk import _compat, _xla_options
from autontk._types import PyTree

AXIS = "tiles"


@dataclasses.dataclass
class Cluster:
  """The devices tiles run on, and this process' place among them.

  Attributes:
    mesh: a one-axis mesh (axis ``"tiles"``) over all participating devices.
    process_index, process_count: as ``jax.process_index()/process_count()``.
  """

  mesh: Mesh
  process_index: int
  process_count: int

  @property
  def size(self) -> int:
    return self.mesh.devices.size

  @property
  def stacked(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec(AXIS))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def barrier(self, name: str) -> None:
    """Waits for every process (no-op with one process)."""
    if self.process_count > 1:
      multihost_utils.sync_global_devices(f"autontk.tiled:{name}")

  def from_process_0(self, values: tuple[int, ...]) -> tuple[int, ...]:
    """Process 0's ``values`` on every process (e.g. an automatic tile,
    which depends on each host's free memory)."""
    if self.process_count == 1:
      return values
    got = multihost_utils.broadcast_one_to_all(np.asarray(values, np.int64))
    return tuple(int(v) for v in np.asarray(got))

  def agree(self, value: int, what: str) -> None:
    """Raises unless every process holds the same ``value``."""
    if self.process_count == 1:
      return
    first = int(multihost_utils.broadcast_one_to_all(np.int64(value)))
    if first != value:
      raise RuntimeError(
          f"Processes disagree on {what} ({value} here, {first} on process "
          "0): every process must call ntk_tiled with the same arguments.")


def checked_devices(devices: Sequence[Any]) -> list[Any]:
  """``devices`` as a list, after checking it is a non-empty sequence of
  ``jax.Device`` objects (a ``ValueError`` or ``TypeError`` naming
  ``devices`` otherwise)."""
  devs = list(devices)
  if not devs:
    raise ValueError("`devices` is empty.")
  for d in devs:
    if not isinstance(d, jax.Device):
      raise TypeError(f"`devices` must hold jax.Device objects; got "
                      f"{type(d).__name__}.")
  return devs


def make_cluster(devices: Sequence[Any] | None) -> Cluster:
  """The cluster for ``devices`` (default: every device of every process)."""
  count = jax.process_count()
  if devices is None:
    devs = jax.devices() if count > 1 else jax.local_devices()
  else:
    devs = checked_devices(devices)
    if count > 1 and {d.process_index for d in devs} != set(range(count)):
      raise ValueError("With several processes, `devices` must include "
                       "devices of every process (or be None).")
  return Cluster(Mesh(np.array(devs), (AXIS,)), jax.process_index(), count)


def spmd_program(body: Callable[..., list[jax.Array]],
                 cluster: Cluster) -> Callable[..., list[jax.Array]]:
  """``jit(shard_map(body))`` over the cluster's mesh.

  ``body(params, batched, shared)`` computes one tile: ``batched`` leaves
  arrive with their per-device slice of the stacked group (leading axis of
  size 1, removed here), ``params`` and ``shared`` are replicated. Each result
  leaf gets the leading group axis back.
  """
  spec, rep = PartitionSpec(AXIS), PartitionSpec()

  def per_device(params, batched, shared):
    outs = body(params, [b[0] for b in batched], shared)
    return [o[None] for o in outs]

  mapped = _compat.shard_map(per_device, mesh=cluster.mesh,
                             in_specs=(rep, spec, rep), out_specs=spec)
  return _xla_options.Jitted(mapped, cluster.mesh.devices.flat[0].platform)


def stacked_input(cluster: Cluster, shape: tuple[int, ...], dtype: Any,
                  make_slot: Callable[[int], np.ndarray]) -> jax.Array:
  """A global ``(G, *shape)`` array; slot ``d`` is built by ``make_slot(d)``.

  Only the slots of this process' devices are built.
  """
  def callback(index):
    start = index[0].start or 0
    stop = index[0].stop if index[0].stop is not None else cluster.size
    return np.stack([np.asarray(make_slot(d), dtype)
                     for d in range(start, stop)])

  return jax.make_array_from_callback((cluster.size, *shape), cluster.stacked,
                                      callback)


def replicated_input(cluster: Cluster, tree: PyTree) -> PyTree:
  """``tree`` copied to every device of the cluster."""
  if cluster.process_count == 1:
    return jax.device_put(tree, cluster.replicated)

  def put(leaf):
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, cluster.replicated,
                                        lambda index: host[index])

  return jax.tree.map(put, tree)


def local_results(outs: Sequence[jax.Array]) -> dict[int, list[np.ndarray]]:
  """Slot -> per-leaf host results, for this process' devices only."""
  slots: dict[int, list[np.ndarray]] = {}
  for i, out in enumerate(outs):
    for shard in out.addressable_shards:
      start = shard.index[0].start or 0
      data = np.asarray(shard.data)
      for k in range(data.shape[0]):
        slots.setdefault(start + k, [None] * len(outs))[i] = data[k]
  return slots
