"""Batch chunking: any method evaluated over blocks of x1 and x2.

A chunked plan splits the batch axis of x1 and x2 into blocks of
``block_size`` examples, runs the plan's method on each pair of blocks and
assembles the kernel. Two schemes:

* ``"scan"``: one compiled program that loops over the blocks with
  ``lax.map`` (one compile, no host round trips; XLA's cost analysis counts
  the loop body once, see :mod:`autontk.costmodel`).
* ``"host"``: a Python loop over one compiled block kernel (the outer call
  is not jitted; the block kernel takes the block offsets as arguments, so
  it is compiled once per block shape and reused).

Where the batch axis is. The batch axis of the inputs, kwargs and outputs is
known only from ``vmap_axes``, which certifies that ``f`` treats examples
independently. Without ``vmap_axes`` there is no chunking: the planner offers
no chunked candidates and executing a chunked plan raises. A chunked plan
never changes values:

* Block sizes need not divide N: a block that runs past the end repeats the
  last example (an index clamp) and the extra rows and columns are dropped;
  for a traced batch axis the extra examples are never summed.
* ``x2=None``: only the diagonal blocks (with x1 work reused) and the
  upper-triangular blocks are computed; the lower ones are mirrored.
* A diagonal batch axis needs only the diagonal blocks; a traced batch axis
  is computed per block as a diagonal one and then summed, so padding never
  leaks into the sum.
* kwargs batched by ``vmap_axes``'s kwargs axes are sliced with the inputs;
  other kwargs are passed whole to every block. kwargs are split between x1
  and x2 once, before chunking, so a split ``rng`` keeps its two keys.
* An ``rng`` kwarg that ``vmap_axes`` does not batch excludes chunking: a
  model that draws random numbers shaped like its batch would draw different
  numbers per block, and that cannot be checked.
* All output leaves must agree on whether their batch axis is kept (plain)
  or traced/diagonal; mixed pytrees are not chunked.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from autontk import _xla_options
from autontk._axes import LeafAxes
from autontk._batch_geometry import (TRACED, BatchGrid, BatchLayout, Cell,
                                     kwargs_leaf_axes, mean_over_batch,
                                     mirror_perm, take_examples)
from autontk._kwargs import (merge_leaves, merge_static, split_params,
                             split_static)
from autontk._problem import NtkProblem

SCHEMES = ("scan", "host")


@dataclasses.dataclass(frozen=True)
class BatchChunking:
  """Evaluate the kernel over blocks of ``block_size`` examples per side.

  Attributes:
    block_size: examples per block of x1 and of x2 (clipped to each side's
      batch size; need not divide it).
    scheme: ``"scan"`` (one compiled loop over blocks) or ``"host"`` (a host
      loop over one compiled block kernel).

  >>> import autontk
  >>> from autontk.chunking import BatchChunking
  >>> plan = autontk.Plan(autontk.Implementation.JACOBIAN_CONTRACTION,
  ...                     chunking=BatchChunking(16, "scan"))
  >>> plan.chunking.host_loop
  False
  """

  block_size: int
  scheme: str = "scan"

  def __post_init__(self):
    if (isinstance(self.block_size, bool) or
        not isinstance(self.block_size, (int, np.integer)) or
        self.block_size < 1):
      raise ValueError(f"`block_size` must be a positive int; got "
                       f"{self.block_size!r}.")
    object.__setattr__(self, "block_size", int(self.block_size))
    if self.scheme not in SCHEMES:
      raise ValueError(f"`scheme` must be one of {SCHEMES}; got "
                       f"{self.scheme!r}.")

  @property
  def host_loop(self) -> bool:
    """True when the outer call must not be jitted (a host loop over blocks)."""
    return self.scheme == "host"

  def __repr__(self) -> str:
    return f"BatchChunking({self.block_size}, {self.scheme!r})"

  def grid(self, problem: NtkProblem) -> BatchGrid:
    """The blocks this chunking evaluates for ``problem``.

    Raises:
      ValueError: the problem cannot be chunked (:func:`unsupported_reason`).
    """
    reason = unsupported_reason(problem)
    if reason is not None:
      raise ValueError(f"This problem cannot be chunked: {reason}.")
    n1, n2 = problem.batch_size(1), problem.batch_size(2)
    return BatchGrid.fit(n1, n2, self.block_size, self.block_size,
                         problem.same_inputs, _layouts(problem)[0].matched)

  def block_programs(self, plan: Any,
                     problem: NtkProblem) -> list["BlockProgram"]:
    """The compiled block kernels this chunking runs for ``problem``.

    Args:
      plan: the plan without its chunking (its method and config run on
        every block).
      problem: the whole (unchunked) problem.

    Returns:
      One :class:`BlockProgram` per kind of block (diagonal blocks that reuse
      x1 work, general pairs), each with the number of blocks that run it.
    """
    grid = self.grid(problem)
    args = jax.tree.map(_abstract, _BlockArgs.of(problem))
    start = jax.ShapeDtypeStruct((), jnp.int32)
    out = []
    for kind, cells in grid.by_kind().items():
      spec = _block_spec(plan, problem, grid, same=(kind == "diag"))
      out.append(BlockProgram(kind, len(cells), _jitted_block(spec),
                              (args, start, start), spec))
    return out

  def assembly_cost(self, problem: NtkProblem) -> "AssemblyCost":
    """What assembling the blocks into the kernel adds.

    The stacked block kernels are written into the block grid and the grid
    into the kernel layout: each step reads and writes the (padded) kernel,
    and up to three copies of it are live at once.
    """
    grid = self.grid(problem)
    rows, cols = grid.shape
    pad = (rows * grid.t1 / grid.n1) * (
        1.0 if grid.matched else cols * grid.t2 / grid.n2)
    kernel = pad * sum(
        math.prod(problem.kernel_shape(i)) *
        jnp.dtype(problem.kernel_dtype(i)).itemsize
        for _, i in problem.kernel_slots())
    return AssemblyCost(bytes_accessed=6 * kernel, peak_memory=3 * kernel)

  def execute(self, plan: Any, problem: NtkProblem) -> list[jax.Array]:
    """Kernels of ``problem`` (one per output leaf) computed block by block.

    Args:
      plan: the :class:`~autontk.Plan` holding this chunking; its method and
        config run on every block.
      problem: the whole (unchunked) problem.

    Returns:
      One kernel per output leaf, equal to the unchunked plan's.
    """
    grid = self.grid(problem)
    inner = dataclasses.replace(plan, chunking=None)
    args = _BlockArgs.of(problem)
    results: dict[str, Any] = {}
    for kind, cells in grid.by_kind().items():
      spec = _block_spec(inner, problem, grid, same=(kind == "diag"))
      run = _scan_blocks if self.scheme == "scan" else _loop_blocks
      results[kind] = run(spec, args, cells)
    return _assemble_jit(grid, _layouts(problem), results.get("diag"),
                         results.get("pair"))


@dataclasses.dataclass(frozen=True)
class BlockProgram:
  """One compiled block kernel of a chunked plan.

  Attributes:
    kind: ``"diag"`` (blocks (i, i), reusing x1 work where the problem does)
      or ``"pair"`` (general blocks).
    count: how many blocks run it per evaluation.
    fn: the jitted kernel, ``fn(args, start1, start2)``.
    args: abstract arguments to lower ``fn`` with.
    key: a hashable identity of the program (equal programs, equal keys).
  """

  kind: str
  count: int
  fn: Callable
  args: tuple
  key: Any


@dataclasses.dataclass(frozen=True)
class AssemblyCost:
  """Bytes moved and extra peak memory of assembling the blocks."""

  bytes_accessed: float
  peak_memory: float


def _abstract(v: Any) -> Any:
  return jax.ShapeDtypeStruct(np.shape(v), jnp.result_type(v))


def unsupported_reason(problem: NtkProblem) -> str | None:
  """Why ``problem`` cannot be chunked, or ``None`` when it can."""
  if problem.vmap is None:
    return ("`vmap_axes` is not given, so the batch axis is unknown; pass "
            "vmap_axes (certifying that examples are independent) to allow "
            "chunked plans")
  rng_axes = problem.vmap.kw_axes_dict.get("rng")
  if "rng" in problem.kwargs1 and (rng_axes is None or
                                   all(a is None for a in rng_axes)):
    return ("f takes an `rng` kwarg that vmap_axes does not batch, and "
            "per-block random draws could differ from unchunked ones")
  if len({layout.matched for layout in _layouts(problem)}) > 1:
    return ("some output leaves keep their batch axis and others trace or "
            "take the diagonal of it")
  return None


def _layouts(problem: NtkProblem) -> tuple[BatchLayout, ...]:
  """Where each output leaf's batch axis (from ``vmap_axes``) sits."""
  return tuple(BatchLayout(ax, b)
               for ax, b in zip(problem.axes, problem.vmap.out_axes))


@dataclasses.dataclass
class _BlockArgs:
  """The array arguments of a block kernel (whole batch; sliced inside)."""

  param_leaves: list[Any]
  x1: list[Any]
  x2: list[Any]
  kw1: list[Any]
  kw2: list[Any]

  @staticmethod
  def of(problem: NtkProblem) -> "_BlockArgs":
    # Python constants among the params and kwargs stay in the (static)
    # block spec.
    p, _ = split_params(problem.params)
    return _BlockArgs(p, jax.tree.leaves(problem.x1),
                      jax.tree.leaves(problem.x2),
                      split_static(problem.kwargs1)[0],
                      split_static(problem.kwargs2)[0])


jax.tree_util.register_dataclass(
    _BlockArgs, data_fields=["param_leaves", "x1", "x2", "kw1", "kw2"],
    meta_fields=[])


@dataclasses.dataclass(frozen=True)
class _BlockSide:
  """How one side's block is cut from its whole batch (static, hashable).

  Attributes:
    n: the side's batch size.
    size: examples per block.
    x_treedef: structure of x.
    x_axes: batch axis of each leaf of x (``None``: every block gets it).
    kw_key: the static key of the kwargs' split (Python values stay static).
    kw_axes: batch axis of each array leaf of the kwargs.
  """

  n: int
  size: int
  x_treedef: Any
  x_axes: tuple[int | None, ...]
  kw_key: Any
  kw_axes: tuple[int | None, ...]

  @staticmethod
  def of(problem: NtkProblem, which: int, size: int) -> "_BlockSide":
    x, kwargs = problem.side(which)
    leaf_axes = kwargs_leaf_axes(kwargs, problem.vmap.kw_axes_dict)
    _, kw_key = split_static(kwargs)
    is_array = kw_key[1]
    return _BlockSide(
        problem.batch_size(which), size, jax.tree.structure(x),
        tuple(problem.vmap.x_axes), kw_key,
        tuple(a for a, arr in zip(leaf_axes, is_array) if arr))

  def take(self, x_leaves: list[Any], kw_arrays: list[Any],
           start: Any) -> tuple[Any, dict[str, Any]]:
    """``(x, kwargs)`` of the block of examples from ``start``."""
    x = [take_examples(v, a, start, self.size, self.n)
         for v, a in zip(x_leaves, self.x_axes)]
    kw = [take_examples(v, a, start, self.size, self.n)
          for v, a in zip(kw_arrays, self.kw_axes)]
    return jax.tree.unflatten(self.x_treedef, x), merge_static(kw, self.kw_key)


@dataclasses.dataclass(frozen=True)
class _BlockSpec:
  """Everything static about one block program (hashable: keys the jit).

  Attributes:
    plan: the plan every block runs (without chunking).
    f: the network.
    same_inputs: the block is ``(x1_i, None)``, reusing the work on x1.
    side1, side2: how each side's block is cut.
    vmap: the problem's ``vmap_axes``.
    out_treedef: structure of f's output.
    out1, out2: ``(shape, dtype)`` of each output leaf of a block.
    axes: each leaf's axes in a block (a traced batch axis made diagonal).
    param_treedef: structure of the params.
    diff_mask: which params leaves are differentiated.
    param_split: the static key of the params' split (Python constants stay
      static).
  """

  plan: Any
  f: Callable
  same_inputs: bool
  side1: _BlockSide
  side2: _BlockSide
  vmap: Any
  out_treedef: Any
  out1: tuple[tuple[tuple[int, ...], Any], ...]
  out2: tuple[tuple[tuple[int, ...], Any], ...]
  axes: tuple[LeafAxes, ...]
  param_treedef: Any
  diff_mask: tuple[bool, ...]
  param_split: Any
  selection: Any = None  # wrt/groups, resolved
  precision: str | None = None


def _block_spec(plan: Any, problem: NtkProblem, grid: BatchGrid,
                same: bool) -> _BlockSpec:
  """The spec of ``problem``'s blocks of ``grid`` (``same``: x2 is x1)."""
  out_axes = problem.vmap.out_axes

  def block_shapes(outs, size):
    return tuple(
        (tuple(size if a == out_axes[i] else s
               for a, s in enumerate(o.shape)), o.dtype)
        for i, o in enumerate(outs))

  return _BlockSpec(
      plan=plan, f=problem.f, same_inputs=same and problem.same_inputs,
      side1=_BlockSide.of(problem, 1, grid.t1),
      side2=_BlockSide.of(problem, 2, grid.t2), vmap=problem.vmap,
      out_treedef=problem.out_treedef,
      out1=block_shapes(problem.out1, grid.t1),
      out2=block_shapes(problem.out2, grid.t2),
      axes=tuple(layout.computed_axes for layout in _layouts(problem)),
      param_treedef=problem.param_treedef, diff_mask=problem.diff_mask,
      param_split=split_params(problem.params)[1],
      selection=problem.selection, precision=problem.precision)


def _block_problem(spec: _BlockSpec, param_leaves: list[Any], x1: Any,
                   x2: Any, kw1: dict[str, Any],
                   kw2: dict[str, Any]) -> NtkProblem:
  """The :class:`NtkProblem` of one block (already validated as a whole)."""
  return NtkProblem.from_parts(
      param_leaves, spec.param_treedef, spec.diff_mask,
      f=spec.f, x1=x1, x2=x2, kwargs1=kw1, kwargs2=kw2,
      same_inputs=spec.same_inputs,
      out1=[jax.ShapeDtypeStruct(s, d) for s, d in spec.out1],
      out2=[jax.ShapeDtypeStruct(s, d) for s, d in spec.out2],
      out_treedef=spec.out_treedef, axes=spec.axes, vmap=spec.vmap,
      selection=spec.selection, precision=spec.precision)


def _block_kernels(spec: _BlockSpec, args: _BlockArgs, start1: Any,
                   start2: Any) -> list[jax.Array]:
  """Kernels of the block (x1[start1:+t1], x2[start2:+t2])."""
  param_leaves = merge_leaves(args.param_leaves, spec.param_split)
  x1, kw1 = spec.side1.take(args.x1, args.kw1, start1)
  if spec.same_inputs:
    x2, kw2 = x1, kw1
  else:
    x2, kw2 = spec.side2.take(args.x2, args.kw2, start2)
  problem = _block_problem(spec, param_leaves, x1, x2, kw1, kw2)
  return list(spec.plan.execute(problem))


@functools.lru_cache(maxsize=64)
def _jitted_block_cached(spec: _BlockSpec) -> Callable:
  return _xla_options.Jitted(functools.partial(_block_kernels, spec))


def _jitted_block(spec: _BlockSpec) -> Callable:
  try:
    return _jitted_block_cached(spec)
  except TypeError:  # unhashable static kwargs: compile per call
    return _xla_options.Jitted(functools.partial(_block_kernels, spec))


def _scan_blocks(spec: _BlockSpec, args: _BlockArgs,
                 cells: list[Cell]) -> list[jax.Array]:
  """Stacked block kernels (per leaf) of ``cells``, one ``lax.map``."""
  starts = (jnp.asarray([c.rows[0] for c in cells], jnp.int32),
            jnp.asarray([c.cols[0] for c in cells], jnp.int32))
  return jax.lax.map(lambda s: _block_kernels(spec, args, s[0], s[1]),
                     starts)


def _loop_blocks(spec: _BlockSpec, args: _BlockArgs,
                 cells: list[Cell]) -> list[jax.Array]:
  """Stacked block kernels (per leaf) of ``cells``, a host loop."""
  run = _jitted_block(spec)
  outs = [run(args, np.int32(c.rows[0]), np.int32(c.cols[0])) for c in cells]
  return [jnp.stack(ks) for ks in zip(*outs)]


def _assemble(grid: BatchGrid, layouts: tuple[BatchLayout, ...],
              diag: list | None, pair: list | None) -> list[jax.Array]:
  """Stacked block kernels -> whole kernels; one per output leaf, or per
  group and output leaf (group-major) with ``groups``."""
  out = []
  for kernel in range(len(diag if diag is not None else pair)):
    layout = layouts[kernel % len(layouts)]
    if grid.matched:
      out.append(_merge_matched(diag[kernel], layout, grid.n1))
      continue
    cells = _cell_grid(grid, layout, None if diag is None else diag[kernel],
                       None if pair is None else pair[kernel])
    out.append(_merge_pairwise(cells, layout, grid.n1, grid.n2))
  return out


_assemble_jit = jax.jit(_assemble, static_argnums=(0, 1))


def _merge_matched(stack: jax.Array, layout: BatchLayout,
                   n: int) -> jax.Array:
  """``(blocks, *block kernel)`` -> the kernel of a matched batch axis."""
  pos = layout.position
  k = jnp.moveaxis(stack, 0, pos)
  s = k.shape
  k = k.reshape(s[:pos] + (s[pos] * s[pos + 1],) + s[pos + 2:])
  k = jax.lax.slice_in_dim(k, 0, n, axis=pos)
  return mean_over_batch(k, pos, n) if layout.kind == TRACED else k


def _cell_grid(grid: BatchGrid, layout: BatchLayout, diag: jax.Array | None,
               pair: jax.Array | None) -> jax.Array:
  """Stacked block kernels -> ``(rows, cols, *block kernel)``.

  A symmetric grid computed the diagonal and the upper triangle; the lower
  triangle is the upper one mirrored.
  """
  rows, cols = grid.shape
  if not grid.symmetric:
    return pair.reshape((rows, cols) + pair.shape[1:])
  g = jnp.zeros((rows, rows) + diag.shape[1:], diag.dtype)
  idx = jnp.arange(rows)
  g = g.at[idx, idx].set(diag)
  if pair is not None:
    upper = grid.by_kind()["pair"]
    ii = jnp.asarray([c.row for c in upper])
    jj = jnp.asarray([c.col for c in upper])
    g = g.at[ii, jj].set(pair)
    g = g.at[jj, ii].set(jnp.transpose(pair, mirror_perm(layout.axes, 1)))
  return g


def _merge_pairwise(cells: jax.Array, layout: BatchLayout, n1: int,
                    n2: int) -> jax.Array:
  """``(rows, cols, *block kernel)`` -> the kernel, padding cropped."""
  pos = layout.position
  k = jnp.moveaxis(cells, (0, 1), (pos, pos + 2))
  s = k.shape
  k = k.reshape(s[:pos] + (s[pos] * s[pos + 1], s[pos + 2] * s[pos + 3]) +
                s[pos + 4:])
  k = jax.lax.slice_in_dim(k, 0, n1, axis=pos)
  return jax.lax.slice_in_dim(k, 0, n2, axis=pos + 1)


def block_sizes(n: int, max_blocks: int = 16) -> list[int]:
  """Candidate block sizes for a batch of ``n``: halvings of n, rounded up.

  Sizes that divide ``n`` are preferred (no padding); at most about
  ``log2(max_blocks)`` sizes are returned, largest first, excluding ``n``.
  """
  out = []
  k = 2
  while k <= max_blocks and k <= n:
    b = -(-n // k)
    if b not in out:
      out.append(b)
    k *= 2
  return out
