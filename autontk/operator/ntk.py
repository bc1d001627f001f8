"""``ntk_operator``: the NTK of a dataset as a matrix-free linear operator."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autontk import _problem, adapters
from autontk._api import ntk_fn
from autontk._options import Implementation, NtkOptions
from autontk._types import ApplyFn, Axes, PyTree, VMapAxes
from autontk.costmodel import hlo
from autontk.operator.layout import OperatorLayout
from autontk.operator.matrix import check_operand
from autontk.operator.products import (Model, Product, Stacked,
                                       abstract_stacked, check_strategy,
                                       make_mesh)
from autontk.tiled import ntk_tiled
from autontk.tiled.autotile import memory_budget_bytes
from autontk.tiled.batch import Side, ntk_arguments, output_batch_axes, sides

MAX_BATCH = 4096
"""Largest automatic batch: bounds the latency of one step of a pass."""

COLUMN_CHUNK = 32
"""Columns per pass when ``batch_size`` is given (automatic batches size
the column chunk from the memory budget too)."""


@dataclasses.dataclass(eq=False)
class _Setup:
  """What every operator of one ``ntk_operator`` call shares."""

  f: ApplyFn
  options: NtkOptions
  x: PyTree
  params: PyTree
  kwargs: dict[str, Any]
  model: Model
  dynamic: list[Any]
  mesh: Any
  batch: int
  column_chunk: int
  implementation: Any
  wrt: Any
  n: int
  kwargs_split: dict[str, Any]
  tile: int
  _dense: list[Any] | None = None

  def ntk(self) -> Any:
    """The kernel function of the operator's kernel."""
    o = self.options
    return ntk_fn(self.f, trace_axes=o.trace_axes, vmap_axes=o.vmap_axes, implementation=self.implementation,
                  wrt=self.wrt, pseudo_axes=o.pseudo_axes,
                  precision=o.precision)

  def kernels(self, other: tuple[PyTree, dict[str, Any], int] | None = None
              ) -> list[Any]:
    """The kernel leaves of ``(x, x)``, or of ``(x_other, x)`` for
    ``other = (x_other, its split kwargs, its size)``: in one call when a
    tile holds the data, else tile by tile (``ntk_tiled``)."""
    ntk = self.ntk()
    if other is None:
      x1, x2, kwargs, n = self.x, None, self.kwargs, self.n
    else:
      x1, x2, kwargs = ntk_arguments(other[0], other[1], self.x,
                                     self.kwargs_split, False)
      n = max(self.n, other[2])
    if n <= self.tile:
      k = ntk(x1, x2, self.params, **kwargs)
    else:
      k = ntk_tiled(ntk, x1, x2, self.params, tile=self.tile,
                    progress=False, devices=list(self.mesh.devices.flat),
                    **kwargs)
    return [np.asarray(v) for v in jax.tree.leaves(k)]

  def dense(self) -> list[Any]:
    if self._dense is None:
      self._dense = self.kernels()
    return self._dense


class NtkOperator:
  """Θ(x, x) of one output leaf as a symmetric PSD ``(M, M)`` operator.

  Made by :func:`autontk.ntk_operator`. ``M = N`` for a kernel traced over
  every output axis but the batch axis; ``M = N·O`` (index ``n·O + o``)
  for an ``(N, O)`` output with ``trace_axes=()``. Products are traceable
  (they run inside ``jax.jit``, ``vmap`` and the solvers' loops).

  Attributes:
    shape: ``(M, M)``.
    dtype: the kernel's dtype.
    layout: how the output leaf reads as a matrix index.
    batch_size: examples per batch of a product.
  """

  def __init__(self, setup: _Setup, leaf: int, layout: OperatorLayout,
               product: Product):
    self._setup = setup
    self._leaf = leaf
    self.layout = layout
    self._product = product
    self._diag = None
    self.batch_size = setup.batch

  @property
  def shape(self) -> tuple[int, int]:
    return (self.layout.size, self.layout.size)

  @property
  def dtype(self) -> Any:
    return self._product.dtype

  def matmat(self, v: Any) -> Any:
    """``Θ v`` for ``v`` of shape ``(M,)`` or ``(M, R)``.

    Costs about ``2 · R · |T|`` passes over the data (one VJP and one JVP
    per example, per column and per traced index ``|T|``), whatever the
    batch size; or, with per-example Jacobians (``products=``), two
    Jacobian passes and ``R`` contractions with them.
    """
    return _apply(self._product, self._setup.dynamic, self, v)

  matvec = matmat

  def __matmul__(self, v: Any) -> Any:
    return self.matmat(v)

  def diag(self) -> jax.Array:
    """``(M,)``: per example, the squared norms of its Jacobian's rows
    (averaged over traced indices), in the product's batches; computed
    once."""
    if self._diag is None:
      self._diag = self._product.diagonal(self._setup.dynamic,
                                          self._setup.tile)
    return self._diag

  def trace(self) -> jax.Array:
    """The exact trace ``Σ diag``."""
    return jnp.sum(self.diag())

  def to_dense(self) -> jax.Array:
    """The ``(M, M)`` matrix, computed with the best kernel plan (in tiles
    past one batch)."""
    k = self._setup.dense()[self._leaf]
    return jnp.asarray(self.layout.dense(k), self.dtype)

  def kernel_call(self, n: int | None = None) -> tuple[Any, tuple[Any, ...],
                                                      dict[str, Any]]:
    """``(ntk, args, kwargs)`` with ``ntk(*args, **kwargs)`` the dense
    kernel of the first ``n`` examples (default all): what
    :meth:`to_dense` computes, for pricing it (``ntk.report``)."""
    setup = self._setup
    ntk = setup.ntk()
    if n is None or n >= setup.n:
      return ntk, (setup.x, None, setup.params), setup.kwargs
    side, _ = sides(ntk.problem(setup.x, None, setup.params, **setup.kwargs))
    x, kw = side.host_tile((0, n), n)
    x1, x2, kwargs = ntk_arguments(x, kw, x, kw, True)
    return ntk, (x1, x2, setup.params), kwargs

  def lower(self, r: int = 1) -> Any:
    """The product's program for ``r`` columns, lowered (for its cost)."""
    return self._product.lower(self._setup.dynamic, r)

  def cross(self, x_other: PyTree, **kwargs: Any) -> "CrossOperator":
    """``Θ(x_other, x)``: the test-train operator.

    Args:
      x_other: other inputs (same structure as ``x``, any batch size).
      **kwargs: ``f``'s kwargs on ``x_other`` (default: the operator's).

    Returns:
      A :class:`CrossOperator` of shape ``(M_other, M)``.
    """
    return _cross(self, x_other, kwargs or self._setup.kwargs)

  def __repr__(self) -> str:
    return (f"NtkOperator(shape={self.shape}, dtype={self.dtype}, "
            f"batch_size={self.batch_size})")


class CrossOperator:
  """``Θ(x_other, x)``, ``(M_other, M)``: products with train-side vectors.

  Attributes:
    shape: ``(M_other, M)``.
    dtype: the kernel's dtype.
  """

  def __init__(self, setup: _Setup, leaf: int, rows: OperatorLayout,
               cols: OperatorLayout, product: Product, x_other: PyTree,
               kwargs_split: dict[str, Any]):
    self._setup, self._leaf = setup, leaf
    self._rows, self._cols = rows, cols
    self._product = product
    self._other = (x_other, kwargs_split, rows.n)

  @property
  def shape(self) -> tuple[int, int]:
    return (self._rows.size, self._cols.size)

  @property
  def dtype(self) -> Any:
    return self._product.dtype

  def matmat(self, v: Any) -> Any:
    """``Θ(x_other, x) v`` for ``v`` of shape ``(M,)`` or ``(M, R)``."""
    return _apply(self._product, self._setup.dynamic, self, v)

  matvec = matmat

  def __matmul__(self, v: Any) -> Any:
    return self.matmat(v)

  def to_dense(self) -> jax.Array:
    """The ``(M_other, M)`` matrix, with the best kernel plan."""
    k = self._setup.kernels(self._other)[self._leaf]
    return jnp.asarray(self._rows.dense(k), self.dtype)

  def __repr__(self) -> str:
    return f"CrossOperator(shape={self.shape}, dtype={self.dtype})"


def _apply(product: Product, dynamic: Sequence[Any], op: Any, v: Any) -> Any:
  check_operand(op, v)
  v = jnp.asarray(v)
  if v.ndim == 1:
    return product(dynamic, v[:, None])[:, 0]
  return product(dynamic, v)


def _cross(op: NtkOperator, x_other: PyTree,
           kwargs: dict[str, Any]) -> CrossOperator:
  setup = op._setup  # noqa: SLF001 - the operator's own class
  problem = _problem.build(setup.f, setup.options, x_other, None,
                           setup.params, kwargs)
  side, _ = sides(problem)
  axes = output_batch_axes(problem, side.size, side.size)
  leaf = op._leaf  # noqa: SLF001
  rows = OperatorLayout.of(tuple(problem.out1[leaf].shape),
                           problem.axes[leaf], axes[leaf])
  if rows.plain_size != op.layout.plain_size:
    raise ValueError(f"f(params, x_other) has output shape "
                     f"{rows.shape}, not matching {op.layout.shape} outside "
                     "the batch axis.")
  stacked = Stacked.of(side, min(setup.batch, side.size), setup.mesh)
  product = dataclasses.replace(op._product, rows=rows,  # noqa: SLF001
                                rows_data=stacked)
  return CrossOperator(setup, leaf, rows, op.layout, product, x_other,
                       problem.kwargs1)


def ntk_operator(f: ApplyFn | Any, x: PyTree, params: PyTree, *,
                 trace_axes: Axes = (-1,), vmap_axes: VMapAxes = None,
                 wrt: Any = None, pseudo_axes: Axes | None = None,
                 precision: str | None = None,
                 batch_size: int | str = "auto",
                 memory_budget: int | None = None,
                 devices: Sequence[Any] | None = None,
                 implementation: Implementation | str | int = "auto",
                 products: str = "auto",
                 **kwargs: Any) -> Any:
  """The NTK Θ(x, x) as a matrix-free symmetric PSD linear operator.

  Products ``Θ V`` run in batches of examples (one VJP pass accumulating
  the parameter-space vectors, then one JVP pass), spread over
  ``devices``; the kernel is never formed, so N may be far past what an
  ``N × N`` kernel allows. ``trace_axes`` reads as neural-tangents does for
  predictions: with ``(-1,)`` an ``(N, N)`` operator acting on each output
  column, with ``()`` an ``(N·O, N·O)`` one on ``y.reshape(-1)``. See
  ``docs/operator.md``.

  Args:
    f: the network, or a model object, as for :func:`autontk.ntk_fn`.
    x: the inputs, batch axis 0 (or as ``vmap_axes`` says); ``f`` must
      treat examples independently.
    params: the parameters.
    trace_axes: output axes traced (summed and divided by their size); the
      batch axis is never traced.
    vmap_axes: the batch axes of inputs, outputs and kwargs, as for
      :func:`autontk.ntk_fn`.
    wrt: the parameters differentiated, as for :func:`autontk.ntk_fn`.
    pseudo_axes: the pseudo-NTK's summed output axes.
    precision: matmul precision, as for :func:`autontk.ntk_fn`.
    batch_size: examples per batch and device, or ``"auto"``: the largest
      whose product program fits ``memory_budget``.
    memory_budget: bytes per device for one batch's product (default: half
      the device's available memory); the inputs, stacked on the devices,
      come on top.
    devices: the devices batches are spread over (default: this process'
      devices).
    implementation: the kernel method of :meth:`NtkOperator.diag` and
      :meth:`NtkOperator.to_dense`.
    products: how a product runs its passes: ``"vector"`` (a VJP and a
      JVP per column and traced index), ``"jacobian"`` (per-example
      Jacobians contracted with all columns at once), or ``"auto"`` (the
      cheaper by XLA's count of the network's FLOPs; the Jacobian for many
      columns on convolutional and weight-shared networks).
    **kwargs: kwargs of ``f``, split as by :func:`autontk.ntk_fn`; sliced
      with the batches when ``vmap_axes`` batches them.

  Returns:
    An :class:`NtkOperator`, or a pytree of them (one per output leaf)
    when ``f`` returns a pytree.

  >>> import jax.numpy as jnp, autontk
  >>> f = lambda p, x: jnp.tanh(x @ p)
  >>> op = autontk.ntk_operator(f, jnp.ones((6, 3)), jnp.ones((3, 2)),
  ...                           batch_size=4)
  >>> op.shape, op.matmat(jnp.ones(6)).shape
  ((6, 6), (6,))
  """
  if "rng" in kwargs:
    raise ValueError("ntk_operator does not take the kwarg `rng`: f's "
                     "randomness over a batch depends on the batch. Make f "
                     "deterministic.")
  check_strategy(products)
  f = adapters.apply_fn(f)
  options = NtkOptions.make(trace_axes, (), vmap_axes,
                            Implementation.NTK_VECTOR_PRODUCTS, wrt=wrt,
                            pseudo_axes=pseudo_axes, precision=precision)
  problem = _problem.build(f, options, x, None, params, kwargs)
  mesh = make_mesh(devices)
  budget = (memory_budget if memory_budget is not None else
            memory_budget_bytes(mesh.devices.flat[0]))
  setup, leaves = _build(problem, options, mesh, batch_size, budget,
                         products)
  setup = dataclasses.replace(setup, f=f, x=x, params=params, kwargs=kwargs,
                              implementation=implementation, wrt=wrt)
  ops = [NtkOperator(setup, i, p.rows, p) for i, p in enumerate(leaves)]
  return jax.tree.unflatten(problem.out_treedef, ops)


def _build(problem: Any, options: NtkOptions, mesh: Any, batch_size: Any,
           budget: int, strategy: str) -> tuple[_Setup, list[Product]]:
  """The shared setup (its user-facing fields left for the caller) and one
  product per output leaf."""
  side, _ = sides(problem)
  out_axes = output_batch_axes(problem, side.size, side.size)
  layouts = [OperatorLayout.of(tuple(o.shape), ax, b)
             for o, ax, b in zip(problem.out1, problem.axes, out_axes)]
  model, dynamic = Model.of(problem, options)
  dtypes = [problem.kernel_dtype(i) for i in range(len(layouts))]
  batch, chunk = _batch_and_chunk(batch_size, model, dynamic, side, layouts,
                                  dtypes, mesh, budget)
  setup = _Setup(None, options, None, None, None, model, dynamic, mesh,
                 batch, chunk, None, None, side.size, problem.kwargs1,
                 _kernel_tile(problem, side.size, batch, budget))
  stacked = Stacked.of(side, batch, mesh)
  return setup, [Product(model, i, layout, layout, stacked, stacked, mesh,
                         chunk, dtypes[i], strategy)
                 for i, layout in enumerate(layouts)]


def _kernel_tile(problem: Any, n: int, batch: int, budget: int) -> int:
  """Examples per tile of :meth:`NtkOperator.diag` and ``to_dense``: at
  most a product's batch, and few enough that two tiles' per-example
  Jacobians (outputs × parameters) fit the budget."""
  outputs = sum(math.prod(o.shape) for o in problem.out1) / n
  item = max(np.dtype(problem.kernel_dtype(i)).itemsize
             for i in range(len(problem.out1)))
  per_example = 2 * outputs * max(problem.n_params, 1) * item
  return int(max(1, min(batch, budget // max(per_example, 1))))


def _batch_and_chunk(batch_size: Any, model: Model, dynamic: list[Any],
                     side: Side, layouts: list[OperatorLayout],
                     dtypes: list[Any], mesh: Any,
                     budget: int) -> tuple[int, int]:
  """``(batch, column chunk)``: given, or the largest that fit ``budget``."""
  per_device = math.ceil(side.size / mesh.devices.size)
  if not (isinstance(batch_size, str) and batch_size == "auto"):
    if (isinstance(batch_size, bool) or
        not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
      raise ValueError(f"`batch_size` must be 'auto' or a positive int; got "
                       f"{batch_size!r}.")
    return min(int(batch_size), per_device), COLUMN_CHUNK

  def peak(b: int) -> int:
    return max(_peak(model, dynamic, side, layout, dtype, i, mesh, b)
               for i, (layout, dtype) in enumerate(zip(layouts, dtypes)))

  b0, b1 = min(8, per_device), min(16, per_device)
  p0 = peak(b0)
  if b1 > b0:
    slope = max((peak(b1) - p0) / (b1 - b0), 1.0)
    batch = int((budget - (p0 - slope * b0)) // slope)
  else:
    batch = b0
  batch = max(1, min(batch, per_device, MAX_BATCH))
  p = peak(batch)
  while p > budget and batch > 1:
    batch //= 2
    p = peak(batch)
  if p > budget:
    raise ValueError(f"One example's product needs {p / 2**20:.1f} MiB, "
                     f"more than `memory_budget` ({budget / 2**20:.1f} MiB).")
  return batch, max(1, min(COLUMN_CHUNK * 8, budget // max(p, 1)))


def _peak(model: Model, dynamic: list[Any], side: Side,
          layout: OperatorLayout, dtype: Any, leaf: int, mesh: Any,
          batch: int) -> int:
  """Peak bytes of the product program on one batch per device."""
  data = abstract_stacked(side, batch, mesh)
  lay = layout.resized(batch * mesh.devices.size)
  product = Product(model, leaf, lay, lay, data, data, mesh, 1, dtype)
  compiled = product.lower(dynamic, 1).compile()
  return int(hlo.analyse_compiled(compiled).peak_memory or 0)
