"""Walks the linearised network and finds each parameter use's cotangent.

:func:`analyse` linearises ``fun`` with ``jax.linearize``, takes the jaxpr of
the linear map and interprets it twice:

1. *discovery* (:mod:`.walk`): every equation that consumes a parameter
   leaf θ, or a view of it (a slice, an index: :mod:`.regions`), is a
   *use*; its constant inputs (residuals, literals) are kept for the rules.
   Call-like equations (``jit``, ``remat``, ``custom_jvp_call``...) are
   walked in line, so uses inside them are found too; ``scan`` bodies and
   ``cond`` branches are walked too (:mod:`.control_flow`), a use inside a loop
   being the stack of its per-iteration uses.
2. *probing*: the same walk as a function of one *probe* per use output,
   with θ set to zero and each use's output replaced by (its other
   tangents' contribution +) its probe. The network's output is linear in the
   probes and ``∂out/∂probe_u = ∂out/∂y_u``, so ``jax.linear_transpose`` of
   this function, vmapped over a basis of output cotangents, gives every
   ``C_u = ∂f/∂y_u`` at once (one reverse pass per output entry), for any
   primitive JAX can transpose (scan, cond, while, custom_lin included).

Each use's :class:`Structure` comes from the rule table (mapped over the
iterations for a use inside a loop, whose iteration becomes one more label);
its θ labels are then laid out per axis of the parameter *leaf*, with the
region of the leaf it covers, so uses of different slices of one leaf can be
paired (or skipped when disjoint). The result is the rule-mapped cotangents
and factors as arrays, plus a static description in a :class:`SideSpec`. Everything works under an outer ``jax.vmap`` (per-example
evaluation): the static description is recorded while tracing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from autontk import _compat
from autontk.methods.structured import rule_table
from autontk.methods.structured.heads import (Head, HeadSpec, factorable,
                                              find_heads)
from autontk.methods.structured.regions import Indices, Region
from autontk.methods.structured.structure import (Factor, IndexFactor,
                                                  Structure, dense)
from autontk.methods.structured.values import (LIVE, Const, Lin, Param,
                                               Registry, Use, WalkOptions,
                                               over_levels)
from autontk.methods.structured.walk import Walk


# Static description of one side --------------------------------------------


@dataclasses.dataclass(frozen=True)
class FactorSpec:
  labels: tuple[int, ...]
  index_label: int | None = None  # set for an IndexFactor
  index_size: int = 0


@dataclasses.dataclass(frozen=True)
class UseSpec:
  """Static part of one (possibly merged) use: labels and factor kinds.

  ``theta_labels`` has one label per axis of the parameter *leaf*; the
  use covers the entries ``region`` of it (per leaf axis, in order).
  """

  param: int
  theta_labels: tuple[int, ...]
  cot_labels: tuple[int, ...]
  factors: tuple[FactorSpec, ...]
  primitive: str  # the primitive's name ("+"-joined for merged uses)
  # Per output leaf: ±1 where the use's output *is* that leaf (up to sign and
  # terms without it), so its cotangent is the identity and is not stored.
  identity: tuple[float | None, ...] = ()
  out_shape: tuple[int, ...] = ()  # the use's output shape (for identity)
  region: tuple[Indices, ...] = ()

  @property
  def theta_sizes(self) -> tuple[int, ...]:
    return tuple(len(ix) for ix in self.region)


@dataclasses.dataclass
class SideSpec:
  """Filled while tracing :func:`analyse`.

  Attributes:
    uses: one :class:`UseSpec` per entry of the returned arrays.
    live: per output leaf, whether it depends on the parameters at all.
    heads: per output leaf, its linear head when the cotangents of that
      leaf run over the head's input (:mod:`.heads`), else ``None``.
  """

  uses: list[UseSpec] = dataclasses.field(default_factory=list)
  live: list[bool] = dataclasses.field(default_factory=list)
  heads: list[HeadSpec | None] = dataclasses.field(default_factory=list)


def _factor_array(f: Factor | IndexFactor) -> jax.Array:
  return f.indices if isinstance(f, IndexFactor) else f.array


@dataclasses.dataclass(frozen=True)
class _OutputLayout:
  """The output leaves that depend on θ, flattened into one cotangent basis.

  Attributes:
    avals: every output leaf's abstract value.
    live: indices of the leaves that depend on θ.
  """

  avals: tuple[Any, ...]
  live: tuple[int, ...]

  @property
  def sizes(self) -> list[int]:
    return [math.prod(self.avals[i].shape) for i in self.live]

  def basis(self) -> list[jax.Array]:
    """Per live leaf, the identity rows of that leaf: ``(total,) + shape``."""
    total = sum(self.sizes)
    dtype = jnp.result_type(*[self.avals[i].dtype for i in self.live])
    eye = jnp.eye(total, dtype=dtype)
    basis, off = [], 0
    for i, n in zip(self.live, self.sizes):
      aval = self.avals[i]
      basis.append(eye[:, off:off + n].reshape((total,) + aval.shape)
                   .astype(aval.dtype))
      off += n
    return basis

  def per_leaf(self, mapped: jax.Array, skip=()) -> list:
    """Splits rows of ``mapped`` (one per basis entry) into output leaves;
    leaves in ``skip`` and dead leaves are ``None``."""
    out, off = [None] * len(self.avals), 0
    for i, n in zip(self.live, self.sizes):
      if i not in skip:
        out[i] = mapped[off:off + n].reshape(self.avals[i].shape +
                                             mapped.shape[1:])
      off += n
    return out


# Probing ----------------------------------------------------------------------


def _probe_cotangents(closed, walk: Walk, params: list,
                      layout: _OutputLayout,
                      heads: Sequence[Head | None]) -> list[list[jax.Array]]:
  """Per probe, ``∂out/∂probe`` (one row per live output entry), or
  ``∂g/∂probe`` for an output with a factored head ``g``."""
  probe_avals = walk.registry.probe_avals
  flat_avals = [a for avals in probe_avals for a in avals]
  splits = [len(avals) for avals in probe_avals]

  def probed(*flat):
    it = iter(flat)
    probes = {k: [next(it) for _ in range(n)] for k, n in enumerate(splits)}
    w = Walk(walk.options, probes=probes, plan=walk.plan,
             constants=walk.constants)
    n = len(closed.jaxpr.outvars)
    res = w.run(closed.jaxpr, closed.consts, params,
                also=[h.g for h in heads if h is not None])
    outs, inner = w.tangents(res[:n]), iter(res[n:])
    values = [outs[i].value if h is None else _reshaped(next(inner).value,
                                                      h.spec.g_shape)
              for i, h in enumerate(heads)]
    return [values[i] if values[i] is not None else
            jnp.zeros(layout.avals[i].shape, layout.avals[i].dtype)
            for i in layout.live]

  try:
    transpose = _compat.linear_transpose(probed, *flat_avals)
    cots_flat = jax.vmap(transpose)(layout.basis())
  except rule_table._NOT_TRANSPOSABLE:  # noqa: SLF001
    # A loop JAX cannot transpose (``while``): forward mode, one JVP per
    # probe entry, is exact too.
    cots_flat = _forward_cotangents(probed, flat_avals, layout)
  cots, pos = [], 0
  for n in splits:
    cots.append(cots_flat[pos:pos + n])
    pos += n
  return cots


def _reshaped(value, shape):
  return None if value is None else jnp.reshape(value, shape)


def _forward_cotangents(probed, flat_avals, layout: _OutputLayout) -> list:
  zeros = [jnp.zeros(a.shape, a.dtype) for a in flat_avals]
  jac = jax.jacfwd(probed, argnums=tuple(range(len(zeros))))(*zeros)
  cots = []
  for k, a in enumerate(flat_avals):
    rows = [jac[j][k].reshape((n,) + a.shape)
            for j, n in enumerate(layout.sizes)]
    cots.append(jnp.concatenate(rows, axis=0))
  return cots


def _reach(outs: list, layout: _OutputLayout,
           k: int) -> tuple[set[int], dict[int, float]]:
  """Leaves probe ``k`` does not reach, and those it reaches as identity."""
  absent, ident = set(), {}
  for i in layout.live:
    lineage = outs[i].lineage
    if k not in lineage.keys():
      absent.add(i)
    elif k not in lineage.other:
      ident[i] = dict(lineage.ident)[k]
  return absent, ident


# Resolution: rules, over the loops' iterations --------------------------------


def _structure(use: Use, ctx, config) -> tuple[Structure, str]:
  if ctx is None:
    return dense(len(use.region.value_shape)), "identity"
  s = rule_table.resolve(ctx, config.structure_rules, config.jacobian_rules,
                         config.strict)
  return s, str(ctx.primitive)


def _single(use: Use, c: Sequence[Any]):
  """The cotangent as the rule expects it: an array, or a tuple for
  multi-output primitives."""
  multi = use.ctx is not None and use.ctx.primitive.multiple_results
  return c[0] if len(c) == 1 and not multi else tuple(c)


def _resolve(use: Use, c: list, config) -> tuple[Structure, str, Any, list]:
  """The use's structure, ``cot_map(C)`` and factor arrays.

  Inside loops the rule runs on one iteration, mapped over the loops'
  leading axes: ``cot_map(C)`` then has shape ``(A, T..., cot dims)`` and
  each factor ``(T or 1..., factor dims)``.
  """
  box = {}
  depth = len(use.lengths)

  def one(*args):
    cots, inputs = args[:len(c)], args[len(c):]
    ctx = (None if use.ctx is None else
           dataclasses.replace(use.ctx, inputs=tuple(inputs)))
    s, name = _structure(use, ctx, config)
    box["s"], box["name"] = s, name
    single = _single(use, cots)
    mapped = single if s.cot_map is None else jax.vmap(s.cot_map)(single)
    return mapped, [_factor_array(f) for f in s.factors]

  inputs = () if use.ctx is None else use.ctx.inputs
  if depth == 0:
    mapped, factors = one(*c, *inputs)
  else:
    cots = [jnp.moveaxis(ci, 0, depth) for ci in c]
    mapped, factors = over_levels(one, [*cots, *inputs], use.lengths)
    mapped = jnp.moveaxis(mapped, depth, 0)
  return box["s"], box["name"], mapped, factors


def _leaf_spec(s: Structure, use: Use, name: str, factors: list
               ) -> tuple[UseSpec, list]:
  """Relabels a (stacked) structure per axis of the parameter leaf."""
  depth = len(use.lengths)
  used = set(s.theta_labels) | set(s.cot_labels)
  for f in s.factors:
    used |= set(f.labels) | ({f.label} if isinstance(f, IndexFactor) else set())
  top = max(used, default=-1) + 1
  loop = [top + l for l in range(depth)]
  fresh = iter(range(top + depth, top + depth + len(use.region.index)))
  looped = dict(use.region.loops)
  theta = []
  for a in range(len(use.region.index)):
    if a in use.region.axes:
      theta.append(s.theta_labels[use.region.axes.index(a)])
    elif a in looped:
      theta.append(loop[looped[a]])
    else:
      theta.append(next(fresh))  # one entry: a label no operand carries
  specs, arrays = [], []
  for f, arr in zip(s.factors, factors):
    keep = [l for l in range(depth)
            if arr.shape[l] != 1 or use.lengths[l] == 1]
    squeeze = tuple(l for l in range(depth) if l not in keep)
    arrays.append(jnp.squeeze(arr, squeeze) if squeeze else arr)
    labels = tuple(loop[l] for l in keep) + f.labels
    if isinstance(f, IndexFactor):
      specs.append(FactorSpec(labels, f.label, f.size))
    else:
      specs.append(FactorSpec(labels))
  spec = UseSpec(use.param, tuple(theta), tuple(loop) + s.cot_labels,
                 tuple(specs), name, region=use.region.index)
  return spec, arrays


def _as_dense(u: UseSpec, mapped: jax.Array) -> jax.Array | None:
  """``cot_map(C)`` as the materialised Jacobian ``(A, *region sizes)`` when
  the use has no factors, else ``None``."""
  if u.factors or len(set(u.cot_labels)) != len(u.cot_labels):
    return None
  summed = tuple(1 + i for i, l in enumerate(u.cot_labels)
                 if l not in u.theta_labels)
  if summed:  # a loop the parameter does not vary along: its uses add up
    mapped = mapped.sum(summed)
  labels = [l for l in u.cot_labels if l in u.theta_labels]
  sizes = u.theta_sizes
  if any(n != 1 for l, n in zip(u.theta_labels, sizes) if l not in labels):
    return None  # constant along a θ axis: cheaper kept implicit
  order = [labels.index(l) for l in u.theta_labels if l in labels]
  mapped = jnp.transpose(mapped, (0,) + tuple(1 + i for i in order))
  return mapped.reshape(mapped.shape[:1] + sizes)


@dataclasses.dataclass
class _Collected:
  """Uses resolved to arrays: dense ones summed per parameter region."""

  dense: dict[tuple, jax.Array] = dataclasses.field(default_factory=dict)
  dense_names: dict[tuple, list[str]] = dataclasses.field(
      default_factory=dict)
  structured: list[tuple[UseSpec, list, Any, set]] = dataclasses.field(
      default_factory=list)

  def add_dense(self, u: UseSpec, mapped: jax.Array) -> None:
    # Uses whose Jacobian is materialised anyway are summed first: their
    # pairs then cost one contraction per parameter region.
    key = (u.param, u.region)
    self.dense[key] = (mapped if key not in self.dense else
                       self.dense[key] + mapped)
    self.dense_names.setdefault(key, []).append(u.primitive)


def _collect_use(use: Use, c: list, outs: list, layout: _OutputLayout,
                 config, into: _Collected) -> None:
  s, name, mapped, factors = _resolve(use, c, config)
  u, factors = _leaf_spec(s, use, name, factors)
  absent, ident = _reach(outs, layout, use.probe)
  if ident and not use.lengths and s.cot_map is None and len(c) == 1:
    identity = tuple(ident.get(i) for i in range(len(outs)))
    out_shape = (use.region.value_shape if use.ctx is None
                 else tuple(use.ctx.out_aval.shape))
    u = dataclasses.replace(u, identity=identity, out_shape=out_shape)
    into.structured.append((u, factors, c[0], absent | set(ident)))
    return
  as_dense = _as_dense(u, mapped)
  if as_dense is not None:
    into.add_dense(u, as_dense)
  else:
    into.structured.append((u, factors, mapped, absent))


def _assemble(collected: _Collected, layout: _OutputLayout,
              spec: SideSpec) -> list[tuple[list, list]]:
  result = []
  for (p, region), mapped in collected.dense.items():
    labels = tuple(range(len(region)))
    spec.uses.append(UseSpec(p, labels, labels, (),
                             "+".join(collected.dense_names[(p, region)]),
                             region=region))
    result.append((layout.per_leaf(mapped), []))
  for u, factors, mapped, skip in collected.structured:
    spec.uses.append(u)
    result.append((layout.per_leaf(mapped, skip), factors))
  return result


def analyse(fun: Callable[..., list[jax.Array]], theta: Sequence[jax.Array],
            config: Any, spec: SideSpec
            ) -> tuple[list[tuple[list, list]], list[jax.Array | None]]:
  """Structured Jacobian pieces of ``fun(*theta)`` (a list of output leaves).

  Args:
    fun: ``fun(*theta) -> list of output arrays``, shapes ``o_L``.
    theta: the parameter leaves.
    config: a ``StructuredConfig``.
    spec: filled with the static description (reset first).

  Returns:
    Per use (merged dense uses first, per parameter region),
    ``(cots, factors)``: ``cots[L]`` is ``cot_map(C)`` for output leaf
    ``L``, shape ``o_L + cot dims``, or ``None`` where the use does not
    reach leaf ``L`` or reaches it as the identity (then
    ``spec.uses[i].identity[L]`` holds the sign); ``factors`` are the
    factor arrays (indices for index factors). Then per output leaf its
    head's map ``scale · W`` where ``spec.heads[L]`` is set (the leaf's
    cotangents then have the head input's shape in place of ``o_L``),
    else ``None``.
  """
  spec.uses.clear()
  spec.heads.clear()
  spec.live.clear()
  theta = tuple(theta)
  if config.custom_vjp == "primal":
    fun = _compat.inline_custom_vjp(fun)
  closed = _compat.linear_jaxpr(fun, theta)
  theta_avals = [v.aval for v in closed.jaxpr.invars]
  params = [Param(i, Region.full(a.shape)) for i, a in enumerate(theta_avals)]
  options = WalkOptions(views=config.views and config.structure_rules,
                        loops=config.loops,
                        unroll_up_to=config.unroll_loops_up_to)
  walk = Walk(options, registry=Registry(theta_avals), constants=[])
  n = len(closed.jaxpr.outvars)
  found = (find_heads(closed) if config.output_heads and options.views
           else [None] * n)
  res = walk.run(closed.jaxpr, closed.consts, params,
                 also=[v for h in found if h is not None for v in (h.g, h.w)])
  outs = walk.tangents(res[:n])
  live = [isinstance(o, Lin) and o.value is LIVE for o in outs]
  spec.live.extend(live)
  heads, head_arrays = _keep_heads(found, res[n:], outs, walk, config)
  spec.heads.extend(h and h.spec for h in heads)
  if not walk.registry.uses or not any(live):
    return [], [None] * n
  avals = [v.aval if h is None else
           jax.ShapeDtypeStruct(h.spec.g_shape, h.g.aval.dtype)
           for v, h in zip(closed.jaxpr.outvars, heads)]
  layout = _OutputLayout(tuple(avals),
                         tuple(i for i, l in enumerate(live) if l))
  cots = _probe_cotangents(closed, walk, params, layout, heads)
  collected = _Collected()
  for use in walk.registry.uses:
    _collect_use(use, cots[use.probe], outs, layout, config, collected)
  return _assemble(collected, layout, spec), head_arrays


def _identity_ready(use: Use, config) -> bool:
  """Whether a use reaching an output as itself keeps an implicit identity
  cotangent (see :func:`_collect_use`)."""
  if use.lengths:
    return False
  if use.ctx is None:
    return True
  if use.ctx.primitive.multiple_results:
    return False
  return _structure(use, use.ctx, config)[0].cot_map is None


def _keep_heads(found: list, inner: list, outs: list, walk: Walk,
                config) -> tuple[list[Head | None], list]:
  """The heads whose outputs are exactly ``L(g)`` plus identity uses, and
  per output the head's map ``scale · W`` (``None`` without a head)."""
  heads, arrays, inner = [], [], iter(inner)
  for h, out in zip(found, outs):
    g, w = (next(inner), next(inner)) if h is not None else (None, None)
    ok = (h is not None and isinstance(out, Lin) and out.value is LIVE and
          isinstance(g, Lin) and g.value is LIVE and isinstance(w, Const) and
          factorable(out.lineage, g.lineage))
    if ok:
      ident = {k for k, _ in out.lineage.ident}
      ok = all(_identity_ready(u, config) for u in walk.registry.uses
               if u.probe in ident)
    heads.append(h if ok else None)
    arrays.append(h.spec.scale * jnp.asarray(w.value) if ok else None)
  return heads, arrays
