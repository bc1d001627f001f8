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

from autontk._axes import LeafAxes
from autontk._kwargs import (is_array_leaf, merge_leaves, merge_static,
                             split_params)
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

  def grid(self, problem: NtkProblem) -> "BlockGrid":
    """The blocks this chunking evaluates for ``problem``."""
    reason = unsupported_reason(problem)
    if reason is not None:
      raise ValueError(f"This problem cannot be chunked: {reason}.")
    return BlockGrid.make(problem, self.block_size)

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
    for kind, pairs in grid.programs().items():
      spec = _block_spec(plan, problem, grid, same=(kind == "diag"))
      out.append(BlockProgram(kind, len(pairs), _jitted_block(spec),
                              (args, start, start), spec))
    return out

  def assembly_cost(self, problem: NtkProblem) -> "AssemblyCost":
    """What assembling the blocks into the kernel adds.

    The stacked block kernels are written into the block grid and the grid
    into the kernel layout: each step reads and writes the (padded) kernel,
    and up to three copies of it are live at once.
    """
    grid = self.grid(problem)
    pad = (grid.nb1 * grid.b1 / grid.n1) * (
        1.0 if grid.matched else grid.nb2 * grid.b2 / grid.n2)
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
    results: dict[str, list[Any]] = {}
    for kind, pairs in grid.programs().items():
      spec = _block_spec(inner, problem, grid, same=(kind == "diag"))
      if self.scheme == "scan":
        starts = (jnp.asarray([i * grid.b1 for i, _ in pairs], jnp.int32),
                  jnp.asarray([j * grid.b2 for _, j in pairs], jnp.int32))
        results[kind] = jax.lax.map(
            lambda s, spec=spec: _block_kernels(spec, args, s[0], s[1]),
            starts)
      else:
        run = _jitted_block(spec)
        outs = [run(args, np.int32(i * grid.b1), np.int32(j * grid.b2))
                for i, j in pairs]
        results[kind] = [jnp.stack(ks) for ks in zip(*outs)]
    return _assemble_jit(grid, results.get("diag"), results.get("pair"))


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
  kinds = {_matched(problem, i) for i in range(len(problem.axes))}
  if len(kinds) > 1:
    return ("some output leaves keep their batch axis and others trace or "
            "take the diagonal of it")
  return None


def _matched(problem: NtkProblem, leaf: int) -> bool:
  """The batch axis of this leaf is traced or diagonal (pairs i with i)."""
  b = problem.vmap.out_axes[leaf]
  ax = problem.axes[leaf]
  return b in ax.trace or b in ax.diagonal


def _kernel_position(axes: LeafAxes, axis: int) -> int:
  """Position in the kernel layout of the first occurrence of ``axis``."""
  return sum(0 if a in axes.trace else 1 if a in axes.diagonal else 2
             for a in range(axis))


def _block_axes(axes: LeafAxes, batch_axis: int) -> LeafAxes:
  """A traced batch axis is computed per block as a diagonal one."""
  if batch_axis not in axes.trace:
    return axes
  trace = tuple(a for a in axes.trace if a != batch_axis)
  return LeafAxes(axes.ndim, trace, tuple(sorted(axes.diagonal +
                                                 (batch_axis,))))


@dataclasses.dataclass(frozen=True)
class BlockGrid:
  """Block layout of one chunked evaluation.

  Attributes:
    n1, n2: batch sizes of x1 and x2.
    b1, b2: block sizes (``block_size`` clipped to n1, n2).
    matched: the batch axis is traced or diagonal: only blocks (i, i).
    symmetric: ``x2 is None`` with a kept batch axis: upper triangle only.
    out_axes: per output leaf, its batch axis.
    axes: per output leaf, the problem's axes.
  """

  n1: int
  n2: int
  b1: int
  b2: int
  matched: bool
  symmetric: bool
  out_axes: tuple[int, ...]
  axes: tuple[LeafAxes, ...]

  @staticmethod
  def make(problem: NtkProblem, block_size: int) -> "BlockGrid":
    n1, n2 = problem.batch_size(1), problem.batch_size(2)
    matched = _matched(problem, 0)
    b1, b2 = min(block_size, n1), min(block_size, n2)
    if matched or problem.same_inputs:
      b2 = b1
    return BlockGrid(n1, n2, b1, b2, matched,
                     problem.same_inputs and not matched,
                     tuple(problem.vmap.out_axes), tuple(problem.axes))

  @property
  def nb1(self) -> int:
    return -(-self.n1 // self.b1)

  @property
  def nb2(self) -> int:
    return -(-self.n2 // self.b2)

  def programs(self) -> dict[str, list[tuple[int, int]]]:
    """Block index pairs per block program.

    ``"diag"`` blocks (i, i) reuse x1 work when the problem does (and are
    the only ones for a matched batch axis); ``"pair"`` blocks are general.
    """
    if self.matched:
      return {"diag": [(i, i) for i in range(self.nb1)]}
    if self.symmetric:
      out = {"diag": [(i, i) for i in range(self.nb1)]}
      upper = [(i, j) for i in range(self.nb1) for j in range(i + 1, self.nb1)]
      if upper:
        out["pair"] = upper
      return out
    return {"pair": [(i, j) for i in range(self.nb1) for j in range(self.nb2)]}

  @property
  def n_blocks(self) -> int:
    return sum(len(p) for p in self.programs().values())


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
    kw1 = [v for v in jax.tree.leaves(problem.kwargs1) if is_array_leaf(v)]
    kw2 = [v for v in jax.tree.leaves(problem.kwargs2) if is_array_leaf(v)]
    # Python constants among the params stay in the (static) block spec.
    p, _ = split_params(problem.params)
    return _BlockArgs(p, jax.tree.leaves(problem.x1),
                      jax.tree.leaves(problem.x2), kw1, kw2)


jax.tree_util.register_dataclass(
    _BlockArgs, data_fields=["param_leaves", "x1", "x2", "kw1", "kw2"],
    meta_fields=[])


@dataclasses.dataclass(frozen=True)
class _KwLayout:
  """Static part of one side's kwargs: treedef, static leaves, batch axes."""

  treedef: Any
  is_array: tuple[bool, ...]
  static: tuple[Any, ...]
  axes: tuple[int | None, ...]  # per array leaf

  @staticmethod
  def of(kwargs: dict[str, Any], vmap) -> "_KwLayout":
    kwd = vmap.kw_axes_dict
    leaf_axes: list[int | None] = []
    for k in sorted(kwargs):  # jax flattens dicts in sorted key order
      n = len(jax.tree.leaves(kwargs[k]))
      leaf_axes.extend(kwd.get(k, (None,) * n))
    leaves, td = jax.tree.flatten(kwargs)
    is_arr = tuple(is_array_leaf(v) for v in leaves)
    return _KwLayout(td, is_arr,
                     tuple(v for v, a in zip(leaves, is_arr) if not a),
                     tuple(ax for ax, a in zip(leaf_axes, is_arr) if a))

  def merge(self, arrays: list[Any]) -> dict[str, Any]:
    return merge_static(arrays, (self.treedef, self.is_array, self.static))


@dataclasses.dataclass(frozen=True)
class _BlockSpec:
  """Everything static about one block program (hashable: keys the jit)."""

  plan: Any
  f: Callable
  same_inputs: bool
  n1: int
  n2: int
  b1: int
  b2: int
  x_treedef: Any
  x_axes: tuple[int | None, ...]
  kw1: _KwLayout
  kw2: _KwLayout
  vmap: Any
  out_treedef: Any
  out1: tuple[tuple[tuple[int, ...], Any], ...]
  out2: tuple[tuple[tuple[int, ...], Any], ...]
  axes: tuple[LeafAxes, ...]
  param_treedef: Any
  diff_mask: tuple[bool, ...]
  # The static key of the params' split (Python constants stay static).
  param_split: Any
  selection: Any = None  # wrt/groups, resolved


def _block_spec(plan: Any, problem: NtkProblem, grid: BlockGrid,
                same: bool) -> _BlockSpec:
  vmap = problem.vmap
  same = same and problem.same_inputs

  def block_shapes(outs, b):
    return tuple(
        (tuple(b if a == vmap.out_axes[i] else s
               for a, s in enumerate(o.shape)), o.dtype)
        for i, o in enumerate(outs))

  axes = tuple(_block_axes(ax, b) for ax, b in zip(problem.axes,
                                                   vmap.out_axes))
  return _BlockSpec(
      plan=plan, f=problem.f, same_inputs=same, n1=grid.n1, n2=grid.n2,
      b1=grid.b1, b2=grid.b2,
      x_treedef=jax.tree.structure(problem.x1), x_axes=tuple(vmap.x_axes),
      kw1=_KwLayout.of(problem.kwargs1, vmap),
      kw2=_KwLayout.of(problem.kwargs2, vmap), vmap=vmap,
      out_treedef=problem.out_treedef,
      out1=block_shapes(problem.out1, grid.b1),
      out2=block_shapes(problem.out2, grid.b2), axes=axes,
      param_treedef=problem._param_treedef,  # noqa: SLF001
      diff_mask=problem._diff_mask,  # noqa: SLF001
      param_split=split_params(problem.params)[1],
      selection=problem.selection)


def _take(leaf: Any, axis: int | None, start: Any, size: int, n: int) -> Any:
  """``size`` examples from ``start`` along ``axis``, clamped at ``n - 1``."""
  if axis is None:
    return leaf
  idx = jnp.minimum(start + jnp.arange(size), n - 1)
  return jnp.take(leaf, idx, axis=axis)


def _block_kernels(spec: _BlockSpec, args: _BlockArgs, start1: Any,
                   start2: Any) -> list[jax.Array]:
  """Kernels of the block (x1[start1:+b1], x2[start2:+b2])."""
  param_leaves = merge_leaves(args.param_leaves, spec.param_split)
  theta = tuple(v for d, v in zip(spec.diff_mask, param_leaves) if d)
  params = jax.tree.unflatten(spec.param_treedef, param_leaves)
  x1 = [_take(v, a, start1, spec.b1, spec.n1)
        for v, a in zip(args.x1, spec.x_axes)]
  kw1 = spec.kw1.merge([_take(v, a, start1, spec.b1, spec.n1)
                        for v, a in zip(args.kw1, spec.kw1.axes)])
  if spec.same_inputs:
    x2, kw2 = x1, kw1
  else:
    x2 = [_take(v, a, start2, spec.b2, spec.n2)
          for v, a in zip(args.x2, spec.x_axes)]
    kw2 = spec.kw2.merge([_take(v, a, start2, spec.b2, spec.n2)
                          for v, a in zip(args.kw2, spec.kw2.axes)])
  x1t = jax.tree.unflatten(spec.x_treedef, x1)
  x2t = x1t if spec.same_inputs else jax.tree.unflatten(spec.x_treedef, x2)
  sub = NtkProblem(
      f=spec.f, params=params, x1=x1t, x2=x2t, kwargs1=kw1, kwargs2=kw2,
      same_inputs=spec.same_inputs,
      out1=[jax.ShapeDtypeStruct(s, d) for s, d in spec.out1],
      out2=[jax.ShapeDtypeStruct(s, d) for s, d in spec.out2],
      out_treedef=spec.out_treedef, axes=spec.axes, vmap=spec.vmap,
      theta=theta, _param_leaves=param_leaves,
      _param_treedef=spec.param_treedef, _diff_mask=spec.diff_mask,
      selection=spec.selection)
  return list(spec.plan.execute(sub))


@functools.lru_cache(maxsize=64)
def _jitted_block_cached(spec: _BlockSpec) -> Callable:
  return jax.jit(functools.partial(_block_kernels, spec))


def _jitted_block(spec: _BlockSpec) -> Callable:
  try:
    return _jitted_block_cached(spec)
  except TypeError:  # unhashable static kwargs: compile per call
    return jax.jit(functools.partial(_block_kernels, spec))


def mirror(k: jax.Array, axes: LeafAxes, lead: int = 0) -> jax.Array:
  """Θ(x2, x1) from Θ(x1, x2): swaps the two sides of every kept axis pair.

  Args:
    k: a kernel in the layout of ``axes``, after ``lead`` leading axes.
    axes: the leaf's axes.
    lead: number of leading (stacking) axes left in place.
  """
  perm = list(range(lead))
  pos = lead
  for a in range(axes.ndim):
    if a in axes.trace:
      continue
    if a in axes.diagonal:
      perm.append(pos)
      pos += 1
    else:
      perm.extend((pos + 1, pos))
      pos += 2
  return jnp.transpose(k, perm)


def _assemble(grid: BlockGrid, diag: list | None,
              pair: list | None) -> list[jax.Array]:
  """Stacked block kernels (per kernel: output leaf, or group and output
  leaf, group-major) -> whole kernels."""
  n_leaves = len(grid.axes)
  out = []
  for kernel in range(len(diag if diag is not None else pair)):
    leaf = kernel % n_leaves
    axes, b = grid.axes[leaf], grid.out_axes[leaf]
    if grid.matched:
      baxes = _block_axes(axes, b)
      pos = _kernel_position(baxes, b)
      k = jnp.moveaxis(diag[kernel], 0, pos)
      shape = k.shape[:pos] + (k.shape[pos] * k.shape[pos + 1],) + k.shape[
          pos + 2:]
      k = jax.lax.slice_in_dim(k.reshape(shape), 0, grid.n1, axis=pos)
      if b in axes.trace:
        k = jnp.sum(k, axis=pos) / grid.n1
      out.append(k)
      continue
    if grid.symmetric:
      nb = grid.nb1
      blocks = diag[kernel]
      g = jnp.zeros((nb, nb) + blocks.shape[1:], blocks.dtype)
      idx = jnp.arange(nb)
      g = g.at[idx, idx].set(blocks)
      if pair is not None:
        ij = [(i, j) for i in range(nb) for j in range(i + 1, nb)]
        ii = jnp.asarray([i for i, _ in ij])
        jj = jnp.asarray([j for _, j in ij])
        g = g.at[ii, jj].set(pair[kernel])
        g = g.at[jj, ii].set(mirror(pair[kernel], axes, lead=1))
    else:
      g = pair[kernel].reshape((grid.nb1, grid.nb2) + pair[kernel].shape[1:])
    pos = _kernel_position(axes, b)
    k = jnp.moveaxis(g, (0, 1), (pos, pos + 2))
    s = k.shape
    k = k.reshape(s[:pos] + (s[pos] * s[pos + 1], s[pos + 2] * s[pos + 3]) +
                  s[pos + 4:])
    k = jax.lax.slice_in_dim(k, 0, grid.n1, axis=pos)
    out.append(jax.lax.slice_in_dim(k, 0, grid.n2, axis=pos + 1))
  return out


_assemble_jit = jax.jit(_assemble, static_argnums=0)


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
