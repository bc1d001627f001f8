"""Compiled tile programs, cached per :class:`~autontk.NtkFn`.

A group program (one tile per device, ``jit(shard_map(...))``) depends on
the NtkFn, the plan, the kind of tile (x2 = x1 or not), the mesh and the
static parts of the arguments. Programs live in a map weakly keyed by their
NtkFn and hold that NtkFn only weakly, so a second ``ntk_tiled`` call with
the same NtkFn and tile shape does not recompile, nothing is stored on the
caller's NtkFn, and an NtkFn nobody uses any more frees its programs (as its
own executables die with it).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Sequence

import jax

from autontk import _kwargs
from autontk._batch_geometry import TRACED, BatchLayout, traced_batch_options
from autontk._kernel_fn import NtkFn
from autontk.tiled import distributed
from autontk.tiled.batch import Skeleton, ntk_arguments

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""NtkFn -> {key: derived NtkFn or compiled group program}."""


def _entries(ntk: NtkFn) -> dict[Any, Any]:
  return _CACHE.setdefault(ntk, {})


def tile_ntk(ntk: NtkFn, layouts: Sequence[BatchLayout],
             ranks: Sequence[int]) -> NtkFn:
  """The NtkFn tiles run with.

  A traced batch axis is computed as a diagonal one (and summed at the
  end), so each tile's examples are traced exactly once: the NtkFn is the
  same one with the batch axis moved from ``trace_axes`` to
  ``diagonal_axes``.

  Args:
    ntk: the caller's NtkFn.
    layouts: each output leaf's batch axis (all of one kind).
    ranks: each output leaf's rank.
  """
  if layouts[0].kind != TRACED:
    return ntk
  trace, diagonal = traced_batch_options(
      ntk.options.trace_axes, ntk.options.diagonal_axes, ranks,
      [layout.batch_axis for layout in layouts])
  key = ("tile_ntk", trace, diagonal)
  entries = _entries(ntk)
  if key not in entries:
    entries[key] = ntk.replace(trace_axes=trace, diagonal_axes=diagonal)
  return entries[key]


def _tile_body(ntk_ref: Callable[[], NtkFn], plan: Any, same: bool,
               skel1: Skeleton, skel2: Skeleton | None,
               param_static: Any) -> Callable:
  """One tile: ``body(param leaves, batched leaves, shared leaves)``."""
  def body(p_dyn, batched, shared):
    params = _kwargs.merge_static(p_dyn, param_static)
    n1, s1 = len(skel1.batched), len(skel1.shared)
    x1, kw1 = skel1.assemble(batched[:n1], shared[:s1])
    if same:
      x2, kw2 = x1, kw1
    else:
      x2, kw2 = skel2.assemble(batched[n1:], shared[s1:])
    a1, a2, kw = ntk_arguments(x1, kw1, x2, kw2, same)
    return jax.tree.leaves(ntk_ref().execute(plan, a1, a2, params, **kw))

  return body


def group_program(ntk: NtkFn, plan: Any, same: bool,
                  cluster: distributed.Cluster, skel1: Skeleton,
                  skel2: Skeleton | None, param_static: Any) -> Callable:
  """The SPMD program of one kind of tile (cached when its key hashes).

  It takes the params' traced leaves (``_kwargs.split_params``); their
  Python constants (``param_static``) are closed over.
  """
  body = _tile_body(weakref.ref(ntk), plan, same, skel1, skel2, param_static)
  key = ("program", plan, same, tuple(cluster.mesh.devices.flat), skel1,
         skel2, param_static)
  try:
    hash(key)
  except TypeError:  # unhashable static kwargs: compile per call
    return distributed.spmd_program(body, cluster)
  entries = _entries(ntk)
  if key not in entries:
    entries[key] = distributed.spmd_program(body, cluster)
  return entries[key]
