"""Kernel-matrix products in batches of examples, spread over devices.

For a partition of the dataset into batches ``B_1..B_k``,

    Θ V = [ J_i ( Σ_j J_jᵀ V_j ) ]_i,

so a product is one pass of VJPs over every batch, accumulating the
parameter-space vectors ``Σ_j J_jᵀ V_j`` (one per column and traced index),
then one pass of JVPs, one per batch. Both passes run inside one compiled
program (``lax.scan`` and ``lax.map`` over the stacked batches), so a product
is traceable: it can sit inside ``jax.scipy.sparse.linalg.cg``'s loop. The
batches are spread over the devices by ``shard_map``: each device runs its
own batches and the parameter-space vectors are summed over devices
(``psum``) between the two passes.

The inputs are stacked ``(k, batch, ...)`` on the devices once (padded by
repeating the last example; padded rows get zero cotangents and are cropped
from the result); the kernel never exists.

Two ways to run the passes (:data:`STRATEGIES`):

* ``"vector"``: per batch, one VJP per column and traced index (``vmap``
  over the cotangents ``V ⊗ e_t``), then one JVP per parameter-space
  vector. Costs ``R·|T|`` VJPs and JVPs per example.
* ``"jacobian"``: per batch, each example's Jacobian (``jacrev``, one VJP
  per output element), contracted with every column at once (``einsum``),
  once in each pass. Costs ``2·plain·|T|`` VJPs per example whatever ``R``,
  plus ``4·R·plain·|T|·P`` multiply-adds (``P`` parameters): far cheaper
  for many columns on networks whose forward pass costs more than their
  parameter count (convolutions, shared weights), dearer for few columns or
  many untraced outputs.

``"auto"`` takes the cheaper of the two by that count, with the network's
forward FLOPs per example from XLA's analysis of its lowered program
(:func:`choose_strategy`), and the Jacobian only where one example's
Jacobian fits :data:`JACOBIAN_BYTES`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from autontk import _xla_options
from autontk._conv_layout import canonical_convolutions
from autontk._kwargs import is_static_param
from autontk._options import NtkOptions
from autontk._problem import NtkProblem
from autontk.costmodel import hlo
from autontk.operator.layout import OperatorLayout
from autontk.tiled import distributed
from autontk.tiled.batch import Side, Skeleton

AXIS = "batches"
DYNAMIC = object()
"""Marks a params leaf passed to the programs as an array."""

STRATEGIES = ("auto", "vector", "jacobian")
"""How a product runs its passes (see the module's docstring)."""

def check_strategy(products: Any) -> None:
  """A ``ValueError`` naming ``products`` unless it is a strategy."""
  if products not in STRATEGIES:
    raise ValueError(f"`products` must be one of {STRATEGIES}; got "
                     f"{products!r}.")


JACOBIAN_BYTES = 64 * 2**20
"""The most bytes of per-example Jacobians a ``"jacobian"`` pass holds at
once (a chunk of the batch's examples)."""

JACOBIAN_VJP_COST = 3.0
"""FLOP for FLOP, what the per-example VJPs of a Jacobian cost against the
vector passes' batched ones (measured 3× on a CNN on CPU: single-example
convolutions under ``vmap``)."""

JACOBIAN_MARGIN = 1.25
"""``"auto"`` takes the Jacobian only when its priced cost is this much
below the vector passes'."""


@dataclasses.dataclass(frozen=True)
class Model:
  """What a batch program needs of the network, without any array.

  Attributes:
    f: the network (the pseudo-NTK's transform of it, if any).
    param_treedef: the params' structure.
    static: per params leaf, the leaf itself if it is a Python constant
      (held as is), else :data:`DYNAMIC`.
    diff_mask: per params leaf, differentiated or not.
    options: the kernel options (precision).
    n_params: the number of differentiated parameters.
  """

  f: Any
  param_treedef: Any
  static: tuple[Any, ...]
  diff_mask: tuple[bool, ...]
  options: NtkOptions
  n_params: int

  @staticmethod
  def of(problem: NtkProblem, options: NtkOptions
         ) -> tuple["Model", list[Any]]:
    """The model of a validated problem and its dynamic params leaves."""
    leaves = problem.param_treedef.flatten_up_to(problem.params)
    static = tuple(v if is_static_param(v) else DYNAMIC for v in leaves)
    dynamic = [jnp.asarray(v) for v in leaves if not is_static_param(v)]
    model = Model(problem.f, problem.param_treedef, static,
                  problem.diff_mask, options, problem.n_params)
    return model, dynamic

  def apply(self, dynamic: Sequence[Any], skeleton: Skeleton,
            batched: Sequence[Any], shared: Sequence[Any], leaf: int):
    """``(theta, theta -> output leaf)`` on one batch."""
    it = iter(dynamic)
    leaves = [next(it) if s is DYNAMIC else s for s in self.static]
    theta = tuple(v for v, d in zip(leaves, self.diff_mask) if d)
    x, kw = skeleton.assemble(batched, shared)

    def fn(theta):
      t = iter(theta)
      full = [next(t) if d else v for v, d in zip(leaves, self.diff_mask)]
      params = jax.tree.unflatten(self.param_treedef, full)
      return jax.tree.leaves(self.f(params, x, **kw))[leaf]

    return theta, fn


@dataclasses.dataclass
class Stacked:
  """One side's inputs as ``(k, batch, ...)`` arrays on the devices.

  Attributes:
    skeleton: the side's structure.
    batched: the batched leaves, stacked (batch axis after the stack axis
      at its own position + 1), sharded along the stack axis.
    shared: the leaves every batch shares, replicated.
    axes: the batched leaves' batch axes.
    n: the number of examples.
    batch: examples per batch.
    count: the number of batches ``k`` (a multiple of the device count).
  """

  skeleton: Skeleton
  batched: list[jax.Array]
  shared: list[jax.Array]
  axes: list[int]
  n: int
  batch: int
  count: int

  @staticmethod
  def of(side: Side, batch: int, mesh: Mesh) -> "Stacked":
    devices = mesh.devices.size
    count = math.ceil(math.ceil(side.size / batch) / devices) * devices
    idx = np.minimum(np.arange(count * batch), side.size - 1)
    axes = [side.axes[i] for i in side.batched]
    stacked = []
    for i, a in zip(side.batched, axes):
      leaf = np.take(np.asarray(side.leaves[i]), idx, axis=a)
      leaf = np.moveaxis(leaf, a, 0)
      leaf = leaf.reshape((count, batch) + leaf.shape[1:])
      stacked.append(jax.device_put(np.moveaxis(leaf, 1, a + 1),
                                    NamedSharding(mesh, PartitionSpec(AXIS))))
    shared = [jax.device_put(side.leaves[i], NamedSharding(mesh,
                                                           PartitionSpec()))
              for i in side.shared]
    return Stacked(side.skeleton, stacked, shared, axes, side.size, batch,
                   count)

  def stack_rows(self, v: Any, plain: int) -> Any:
    """``(M, R)`` -> ``(k, batch, plain, R)``, zero-padded."""
    r = v.shape[-1]
    v = v.reshape(self.n, plain, r)
    v = jnp.pad(v, ((0, self.count * self.batch - self.n), (0, 0), (0, 0)))
    return v.reshape(self.count, self.batch, plain, r)

  def unstack_rows(self, out: Any) -> Any:
    """``(k, batch, plain, R)`` -> ``(M, R)``, padding cropped."""
    r = out.shape[-1]
    out = out.reshape(self.count * self.batch, -1, r)[:self.n]
    return out.reshape(-1, r)


def make_mesh(devices: Sequence[Any] | None) -> Mesh:
  """A one-axis mesh over ``devices`` (default: this process' devices)."""
  devs = (jax.local_devices() if devices is None else
          distributed.checked_devices(devices))
  return Mesh(np.array(devs), (AXIS,))


def _select(leaves: Sequence[Any], j: Any) -> list[Any]:
  """Batch ``j`` of stacked leaves."""
  return [jax.lax.dynamic_index_in_dim(v, j, 0, keepdims=False)
          for v in leaves]


@dataclasses.dataclass(eq=False)
class Product:
  """``V -> Θ(x_rows, x_cols) V`` for one output leaf, compiled once per
  shape of ``V``.

  Attributes:
    model: the network.
    leaf: the output leaf.
    rows, cols: the layouts of the leaf on each side.
    rows_data, cols_data: the stacked inputs of each side.
    mesh: the devices.
    column_chunk: columns per pass (bounds the parameter-space vectors).
    dtype: the kernel's dtype (operands are cast to it).
    strategy: one of :data:`STRATEGIES`.
  """

  model: Model
  leaf: int
  rows: OperatorLayout
  cols: OperatorLayout
  rows_data: Stacked
  cols_data: Stacked
  mesh: Mesh
  column_chunk: int
  dtype: Any
  strategy: str = "auto"
  program: Any = dataclasses.field(init=False, repr=False)
  diagonals: dict[int, Any] = dataclasses.field(init=False, repr=False)
  forward: dict[str, Any] = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    self.program = _xla_options.Jitted(lambda *a: _product(self, *a),
                                    self.platform)
    self.diagonals = {}
    self.forward = {}

  @property
  def platform(self) -> str:
    """The platform of the mesh's devices."""
    return self.mesh.devices.flat[0].platform

  def in_loop(self, body: Any) -> Any:
    """``body``, a loop's body, with its convolutions in the layout of
    the CPU backend's fast kernels (see :mod:`autontk._conv_layout`) when
    the devices are CPUs."""
    if self.platform == "cpu":
      return canonical_convolutions(body)
    return body

  def diagonal(self, dynamic: Sequence[Any], chunk: int) -> Any:
    """``(M_rows,)``: the diagonal of ``Θ(x_rows, x_rows)``, from each
    example's Jacobian (``chunk`` examples at a time, ``jax.jacrev``)."""
    program = self.diagonals.get(chunk)
    if program is None:
      program = self.diagonals[chunk] = _xla_options.Jitted(
          lambda *a: _diagonal(self, chunk, *a), self.platform)
    out = program(dynamic, self.rows_data.batched, self.rows_data.shared)
    return self.rows_data.unstack_rows(out[..., None])[:, 0]

  def __call__(self, dynamic: Sequence[Any], v: Any) -> Any:
    """``v``: ``(M_cols, R)`` -> ``(M_rows, R)``."""
    return self.program(dynamic, self.rows_data.batched,
                                  self.rows_data.shared,
                                  self.cols_data.batched,
                                  self.cols_data.shared, v)

  def lower(self, dynamic: Sequence[Any], r: int) -> Any:
    """The lowered program for ``R = r`` columns."""
    v = jax.ShapeDtypeStruct((self.cols.size, r), self.dtype)
    return self.program.lower(
        dynamic, self.rows_data.batched, self.rows_data.shared,
        self.cols_data.batched, self.cols_data.shared, v)


def _product(p: Product, dynamic, rows_batched, rows_shared, cols_batched,
             cols_shared, v):
  """The whole product: column chunks one after the other (``lax.map``),
  each a VJP pass and a JVP pass over every device's batches."""
  r = v.shape[-1]
  jacobian = choose_strategy(p, dynamic, cols_shared, r) == "jacobian"
  chunk = _jacobian_columns(p, r) if jacobian else min(p.column_chunk, r)
  n_chunks = math.ceil(r / chunk)
  v = jnp.pad(v.astype(p.dtype), ((0, 0), (0, n_chunks * chunk - r)))
  v = jnp.moveaxis(v.reshape(v.shape[0], n_chunks, chunk), 1, 0)
  vs = jax.vmap(lambda c: p.cols_data.stack_rows(c, p.cols.plain_size))(v)
  spec, rep = PartitionSpec(AXIS), PartitionSpec()
  per_device = _per_device_jacobian if jacobian else _per_device
  body = jax.shard_map(
      lambda *a: per_device(p, *a), mesh=p.mesh,
      in_specs=(rep, spec, rep, spec, rep, spec),
      out_specs=spec, check_vma=False)

  def one(vc):
    return p.rows_data.unstack_rows(body(dynamic, rows_batched, rows_shared,
                                         cols_batched, cols_shared, vc))

  outs = jax.lax.map(one, vs)  # (n_chunks, M_rows, chunk)
  out = jnp.moveaxis(outs, 0, 1).reshape(outs.shape[1], -1)
  return out[:, :r]


def choose_strategy(p: Product, dynamic: Sequence[Any],
                    cols_shared: Sequence[Any], r: int) -> str:
  """``"vector"`` or ``"jacobian"`` for a product with ``r`` columns (the
  product's own strategy unless ``"auto"``; see the module's docstring)."""
  if p.strategy != "auto":
    return p.strategy
  if r < 2 or _example_bytes(p, p.cols) > JACOBIAN_BYTES or (
      _example_bytes(p, p.rows) > JACOBIAN_BYTES):
    return "vector"
  if "flops" not in p.forward:
    p.forward["flops"] = _forward_flops(p, dynamic, cols_shared)
  flops = p.forward["flops"]
  if flops is None:
    return "vector"
  plain, params = p.cols.plain_size, p.model.n_params
  vector = 2.0 * r * flops
  jacobian = (JACOBIAN_VJP_COST * 2.0 * plain * flops +
              2.0 * r * plain * params)
  return "jacobian" if JACOBIAN_MARGIN * jacobian < vector else "vector"


def _forward_flops(p: Product, dynamic: Sequence[Any],
                   shared: Sequence[Any]) -> float | None:
  """FLOPs of the network on one example (XLA's count of the lowered
  forward program; ``None`` where the backend gives none)."""
  data = p.cols_data

  def forward(dynamic, one, shared):
    theta, fn = p.model.apply(dynamic, data.skeleton, one, shared, p.leaf)
    return fn(theta)

  one = []
  for v, a in zip(data.batched, data.axes):
    shape = list(v.shape[1:])
    shape[a] = 1
    one.append(jax.ShapeDtypeStruct(tuple(shape), v.dtype))
  avals = [jax.ShapeDtypeStruct(np.shape(v), v.dtype)
           for v in (*dynamic, *shared)]
  lowered = jax.jit(forward).lower(avals[:len(dynamic)], one,
                                   avals[len(dynamic):])
  return hlo.analyse_lowered(lowered).flops or None


def _jacobian_columns(p: Product, r: int) -> int:
  """Columns per ``"jacobian"`` pass: all ``r``, or as many as keep the
  parameter-space vectors within four times :data:`JACOBIAN_BYTES`."""
  item = jnp.dtype(p.dtype).itemsize
  per_column = p.cols.trace_size * max(p.model.n_params, 1) * item
  return max(1, min(r, 4 * JACOBIAN_BYTES // per_column))


def _example_bytes(p: Product, layout: OperatorLayout) -> int:
  """Bytes of one example's Jacobian."""
  return (layout.plain_size * layout.trace_size * p.model.n_params *
          jnp.dtype(p.dtype).itemsize)


def _jacobian_chunk(p: Product, data: Stacked, layout: OperatorLayout) -> int:
  """Examples whose Jacobians a ``"jacobian"`` pass holds at once: the
  largest divisor of the batch within :data:`JACOBIAN_BYTES` (at least
  one)."""
  most = max(1, JACOBIAN_BYTES // max(_example_bytes(p, layout), 1))
  return max(d for d in range(1, min(most, data.batch) + 1)
             if data.batch % d == 0)


def _per_device(p: Product, dynamic, rows_batched, rows_shared,
                cols_batched, cols_shared, v):
  """One device's batches: VJPs of its column batches, summed over every
  device, then JVPs of its row batches."""
  r = v.shape[-1]
  with p.model.options.precision_scope():
    def vjp_step(acc, j):
      theta, fn = p.model.apply(dynamic, p.cols_data.skeleton,
                                _select(cols_batched, j), cols_shared,
                                p.leaf)
      vj = jax.lax.dynamic_index_in_dim(v, j, 0, keepdims=False)
      cot = p.cols.cotangents(vj.astype(_out_dtype(fn, theta)),
                              p.cols_data.batch)
      _, pull = jax.vjp(fn, theta)
      (g,) = jax.vmap(pull)(cot)
      return jax.tree.map(jnp.add, acc, g), None

    theta0, fn0 = p.model.apply(dynamic, p.cols_data.skeleton,
                                _select(cols_batched, 0), cols_shared,
                                p.leaf)
    s = r * p.cols.trace_size
    acc = tuple(jnp.zeros((s,) + t.shape, t.dtype) for t in theta0)
    local = v.shape[0]
    acc, _ = jax.lax.scan(p.in_loop(vjp_step), acc, jnp.arange(local))
    acc = jax.lax.psum(acc, AXIS)

    def jvp_batch(j):
      theta, fn = p.model.apply(dynamic, p.rows_data.skeleton,
                                _select(rows_batched, j), rows_shared,
                                p.leaf)
      out = jax.vmap(lambda g: jax.jvp(fn, (theta,), (g,))[1])(acc)
      return p.rows.read(out, r)

    local_rows = rows_batched[0].shape[0] if rows_batched else 1
    return jax.lax.map(p.in_loop(jvp_batch), jnp.arange(local_rows))


def _diagonal(p: Product, chunk: int, dynamic, batched, shared):
  spec, rep = PartitionSpec(AXIS), PartitionSpec()
  return jax.shard_map(
      lambda *a: _diagonal_per_device(p, chunk, *a), mesh=p.mesh,
      in_specs=(rep, spec, rep), out_specs=spec,
      check_vma=False)(dynamic, batched, shared)


def _per_device_jacobian(p: Product, dynamic, rows_batched, rows_shared,
                         cols_batched, cols_shared, v):
  """:func:`_per_device` by per-example Jacobians: each column batch's
  Jacobians contracted with all columns, summed over every device, then
  each row batch's contracted with the parameter-space vectors."""
  r, tn = v.shape[-1], p.cols.trace_size
  cols, rows = p.cols_data, p.rows_data
  chunk = _jacobian_chunk(p, cols, p.cols)
  with p.model.options.precision_scope():
    def vjp_step(acc, j):
      leaves, vj = _select(cols_batched, j), _select([v], j)[0]

      def sub(acc, i):
        jac = jax.vmap(lambda e: _example_jacobian(
            p, cols, p.cols, dynamic, leaves, cols_shared, e))(
                i * chunk + jnp.arange(chunk))
        vc = jax.lax.dynamic_slice_in_dim(vj, i * chunk, chunk, 0)
        g = [jnp.einsum("ept...,epr->rt...", a, vc.astype(a.dtype))
             for a in jac]
        return tuple(a + b.reshape(a.shape) for a, b in zip(acc, g)), None

      acc, _ = jax.lax.scan(sub, acc, jnp.arange(cols.batch // chunk))
      return acc, None

    theta0, _ = p.model.apply(dynamic, cols.skeleton,
                              _select(cols_batched, 0), cols_shared, p.leaf)
    acc = tuple(jnp.zeros((r * tn,) + t.shape, t.dtype) for t in theta0)
    acc, _ = jax.lax.scan(p.in_loop(vjp_step), acc,
                          jnp.arange(v.shape[0]))
    acc = jax.lax.psum(acc, AXIS)
    acc = [a.reshape((r, tn) + a.shape[1:]) for a in acc]

    def example(leaves, e):
      jac = _example_jacobian(p, rows, p.rows, dynamic, leaves, rows_shared,
                              e)
      out = sum(jnp.einsum("pt...,rt...->pr", a, g.astype(a.dtype))
                for a, g in zip(jac, acc))
      return out / tn

    def one_batch(j):
      leaves = _select(rows_batched, j)
      return jax.lax.map(lambda e: example(leaves, e),
                         jnp.arange(rows.batch),
                         batch_size=_jacobian_chunk(p, rows, p.rows))

    local_rows = rows_batched[0].shape[0] if rows_batched else 1
    return jax.lax.map(p.in_loop(one_batch), jnp.arange(local_rows))


def _example_jacobian(p: Product, data: Stacked, layout: OperatorLayout,
                      dynamic, leaves, shared, e) -> list[Any]:
  """Example ``e`` of a batch's Jacobian: per differentiated params leaf,
  ``(plain, |T|, *leaf shape)``."""
  one = [jax.lax.dynamic_slice_in_dim(v, e, 1, axis=a)
         for v, a in zip(leaves, data.axes)]
  theta, fn = p.model.apply(dynamic, data.skeleton, one, shared, p.leaf)
  ndim = len(layout.shape)
  jac = []
  for j, t in zip(jax.jacrev(fn)(theta), theta):
    j = jnp.transpose(j, layout.perm + tuple(range(ndim, j.ndim)))
    jac.append(j.reshape((layout.plain_size, layout.trace_size) + t.shape))
  return jac


def _diagonal_per_device(p: Product, chunk: int, dynamic, batched, shared):
  """``(k_local, batch, plain)``: per example, the squared norms of its
  Jacobian's rows, averaged over the traced indices."""
  data, layout = p.rows_data, p.rows

  def example(leaves, i):
    jac = _example_jacobian(p, data, layout, dynamic, leaves, shared, i)
    sq = sum(jnp.sum(jnp.square(j), axis=tuple(range(2, j.ndim)))
             for j in jac)
    return jnp.mean(sq, -1)

  def one_batch(j):
    leaves = _select(batched, j)
    return jax.lax.map(p.in_loop(lambda i: example(leaves, i)),
                       jnp.arange(data.batch),
                       batch_size=min(chunk, data.batch))

  with p.model.options.precision_scope():
    return jax.lax.map(one_batch, jnp.arange(batched[0].shape[0]))


def _out_dtype(fn, theta) -> Any:
  return jax.eval_shape(fn, theta).dtype


def abstract_stacked(side: Side, batch: int, mesh: Mesh) -> Stacked:
  """A :class:`Stacked` of one batch per device, shapes only (for probing
  a batch size's peak memory without placing the data)."""
  devices = mesh.devices.size
  spec = NamedSharding(mesh, PartitionSpec(AXIS))
  rep = NamedSharding(mesh, PartitionSpec())
  axes = [side.axes[i] for i in side.batched]
  stacked = []
  for i, a in zip(side.batched, axes):
    shape = list(np.shape(side.leaves[i]))
    shape[a] = batch
    stacked.append(jax.ShapeDtypeStruct(
        (devices, *shape), np.result_type(side.leaves[i]), sharding=spec))
  shared = [jax.ShapeDtypeStruct(np.shape(side.leaves[i]),
                                 np.result_type(side.leaves[i]), sharding=rep)
            for i in side.shared]
  return Stacked(side.skeleton, stacked, shared, axes, batch * devices, batch,
                 devices)
