"""Method 2: NTK-vector products.

Builds each output leaf's kernel column by column: a column ``e`` of side 2
is pulled back to parameter space with a VJP (``v = J2ᵀ e``) and pushed
forward with a JVP (``J1 v``). Traced and diagonal axes are applied to every
column as soon as it is computed, so only the kept entries are ever stored
(neural-tangents builds the full O×O block first). Under ``vmap_axes`` the
VJPs run per example, and a batch axis that is traced or diagonal pairs
example i of x1 with example i of x2 only. Time N²·O·[FP]; memory of one
batch of columns (``column_chunk``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from autontk._axes import LeafAxes
from autontk._batch_geometry import kernel_position, mean_over_batch
from autontk._options import Implementation
from autontk._problem import NtkProblem
from autontk.methods.registry import register


@dataclasses.dataclass(frozen=True)
class NtkVectorProductsConfig:
  """Options of the NTK-vector-products method.

  Attributes:
    column_chunk: how many kernel columns (VJP+JVP pairs) are evaluated at
      once; ``None`` evaluates all of them in one vectorised batch (fastest,
      most memory). Smaller values trade speed for memory.
  """

  column_chunk: int | None = None


def _map(fn: Callable, xs: Any, chunk: int | None) -> Any:
  n = jax.tree.leaves(xs)[0].shape[0]
  if chunk is None or chunk >= n:
    return jax.vmap(fn)(xs)
  return jax.lax.map(fn, xs, batch_size=max(int(chunk), 1))


def _select(u: jax.Array, coord: tuple[jax.Array, ...],
            axes: LeafAxes) -> jax.Array:
  """Keeps only entries of the x1-side output that pair with this column."""
  matched = set(axes.trace) | set(axes.diagonal)
  if not matched:
    return u
  idx = tuple(coord[i] if i in matched else slice(None)
              for i in range(axes.ndim))
  return u[idx]


def _assemble(cols: jax.Array, shape2: tuple[int, ...],
              plain1: tuple[int, ...], axes: LeafAxes) -> jax.Array:
  """(size2, plain1 entries...) columns -> kernel layout, trace applied."""
  k = cols.reshape(tuple(shape2) + tuple(plain1))
  if axes.trace:
    k = jnp.sum(k, axis=axes.trace)
  kept2 = [i for i in range(axes.ndim) if i not in axes.trace]
  pos2 = {ax: j for j, ax in enumerate(kept2)}
  pos1 = {ax: len(kept2) + j for j, ax in enumerate(axes.plain)}
  perm = []
  for i in kept2:
    if i in pos1:
      perm.append(pos1[i])
    perm.append(pos2[i])
  return jnp.transpose(k, perm)


def _block(lin1: Callable, column: Callable[[jax.Array], Any],
           shape1: tuple[int, ...], shape2: tuple[int, ...], axes: LeafAxes,
           chunk: int | None) -> jax.Array:
  """Kernel of one leaf from a JVP ``lin1`` and a column pull-back."""
  size2 = math.prod(shape2)

  def one(idx):
    coord = jnp.unravel_index(idx, shape2) if shape2 else ()
    return _select(lin1(column(idx)), coord, axes)

  cols = _map(one, jnp.arange(size2), chunk)
  plain1 = tuple(shape1[i] for i in axes.plain)
  k = _assemble(cols, shape2, plain1, axes)
  return k / axes.trace_size(shape1)


def _one_hot(idx: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
  return (jnp.arange(math.prod(shape)) == idx).astype(dtype).reshape(shape)


def _leaf_fn(fn: Callable, i: int) -> Callable:
  return lambda theta, *a: fn(theta, *a)[i]


def _push_forward(fn: Callable, theta: Any) -> Callable:
  """``v -> J v`` for ``fn`` at ``theta``.

  Forward mode when it applies; otherwise (functions with a ``custom_vjp``
  have no JVP) the transpose of the VJP, which is the same linear map.
  """
  try:
    lin = jax.linearize(fn, theta)[1]
    # With a custom_vjp inside, only applying (and batching) lin fails.
    jax.eval_shape(jax.vmap(lin), jax.tree.map(lambda t: t[None], theta))
    return lin
  except TypeError as e:
    if "custom_vjp" not in str(e):
      raise
  out, pull = jax.vjp(fn, theta)
  push = jax.linear_transpose(pull, out)
  return lambda v: push((v,))[0]


def _full_batch_kernel(problem: NtkProblem, i: int, chunk: int | None):
  axes = problem.axes[i]
  shape1, shape2 = problem.out1[i].shape, problem.out2[i].shape
  lin1 = _push_forward(_leaf_fn(problem.fn(1), i), problem.theta)
  _, pull = jax.vjp(_leaf_fn(problem.fn(2), i), problem.theta)
  dtype = problem.out2[i].dtype

  def column(idx):
    (v,) = pull(_one_hot(idx, shape2, dtype))
    return v

  return _block(lin1, column, shape1, shape2, axes, chunk)


def _paired_kernel(problem: NtkProblem, i: int, chunk: int | None):
  """Batch axis traced or diagonal: only example pairs (j, j) are needed."""
  b = problem.vmap.out_axes[i]
  axes = problem.axes[i]
  sub = axes.drop(b)
  g1, xl1, kw1, (xin1, kwin1) = problem.example_fn(1)
  g2, xl2, kw2, (xin2, kwin2) = problem.example_fn(2)
  shape1 = tuple(s for a, s in enumerate(problem.out1[i].shape) if a != b)
  shape2 = tuple(s for a, s in enumerate(problem.out2[i].shape) if a != b)
  dtype = problem.out2[i].dtype
  theta = problem.theta

  def pair(x1j, k1j, x2j, k2j):
    lin1 = _push_forward(lambda t: g1(t, x1j, k1j)[i], theta)
    _, pull = jax.vjp(lambda t: g2(t, x2j, k2j)[i], theta)

    def column(idx):
      (v,) = pull(_one_hot(idx, shape2, dtype))
      return v

    return _block(lin1, column, shape1, shape2, sub, chunk)

  blocks = jax.vmap(pair, in_axes=(xin1, kwin1, xin2, kwin2))(xl1, kw1, xl2,
                                                            kw2)
  if b in axes.trace:
    return mean_over_batch(blocks, 0, blocks.shape[0])
  return jnp.moveaxis(blocks, 0, kernel_position(axes, b))


def _per_example_vjp_kernel(problem: NtkProblem, i: int, chunk: int | None):
  """Batch axis kept twice: per-example VJPs, full-batch JVPs."""
  b = problem.vmap.out_axes[i]
  axes = problem.axes[i]
  shape1, shape2 = problem.out1[i].shape, problem.out2[i].shape
  single2 = tuple(s for a, s in enumerate(shape2) if a != b)
  csize = math.prod(single2)
  g2, xl2, kw2, (xin2, kwin2) = problem.example_fn(2)
  dtype = problem.out2[i].dtype
  theta = problem.theta

  def pullbacks(x2j, k2j):
    _, vjp = jax.vjp(lambda t: g2(t, x2j, k2j)[i], theta)
    return _map(lambda c: vjp(_one_hot(c, single2, dtype))[0],
                jnp.arange(csize), chunk)

  vs = jax.vmap(pullbacks, in_axes=(xin2, kwin2))(xl2, kw2)  # (N2, csize, θ)
  lin1 = _push_forward(_leaf_fn(problem.fn(1), i), theta)
  other = [a for a in range(len(shape2)) if a != b]

  def column(idx):
    coord = jnp.unravel_index(idx, shape2)
    c = (jnp.ravel_multi_index(tuple(coord[a] for a in other), single2,
                               mode="clip") if other else 0)
    return jax.tree.map(lambda v: v[coord[b], c], vs)

  return _block(lin1, column, shape1, shape2, axes, chunk)


COLUMN_CHUNKS = (64, 8)
"""``column_chunk`` values offered as memory variants."""


def _columns(problem: NtkProblem) -> int:
  """Kernel columns this method evaluates per group (an upper bound)."""
  return sum(math.prod(o.shape) for o in problem.out2)


def memory_variants(problem: NtkProblem) -> tuple[NtkVectorProductsConfig, ...]:
  """Column-chunked configs: less memory, one loop iteration per chunk."""
  columns = _columns(problem)
  return tuple(NtkVectorProductsConfig(column_chunk=c) for c in COLUMN_CHUNKS
               if c < columns)


def loop_iterations(problem: NtkProblem,
                    config: NtkVectorProductsConfig | None) -> int:
  """Iterations of the column loop (0 when the columns are vectorised)."""
  chunk = None if config is None else config.column_chunk
  columns = _columns(problem)
  if chunk is None or chunk >= columns:
    return 0
  # Grouped: one column loop per group.
  return problem.n_groups * -(-columns // chunk)


@register(Implementation.NTK_VECTOR_PRODUCTS, NtkVectorProductsConfig,
          memory_variants=memory_variants, loop_iterations=loop_iterations)
def compute(problem: NtkProblem,
            config: NtkVectorProductsConfig | None = None) -> list[jax.Array]:
  config = config or NtkVectorProductsConfig()
  if problem.group_names is not None:
    # One restricted pass per group: a group's columns pull back to, and
    # push forward from, its own parameters only.
    return [k for g in range(problem.n_groups)
            for k in compute(problem.restrict(g), config)]
  kernels = []
  for i, axes in enumerate(problem.axes):
    if problem.vmap is None:
      k = _full_batch_kernel(problem, i, config.column_chunk)
    elif problem.vmap.out_axes[i] in axes.trace + axes.diagonal:
      k = _paired_kernel(problem, i, config.column_chunk)
    else:
      k = _per_example_vjp_kernel(problem, i, config.column_chunk)
    kernels.append(k.astype(problem.kernel_dtype(i)))
  return kernels
