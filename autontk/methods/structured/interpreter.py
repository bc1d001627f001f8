"""Walks the linearised network and finds each parameter use's cotangent.

:func:`analyse` linearises ``fun`` with ``jax.linearize``, takes the jaxpr of
the linear map and interprets it twice:

1. *discovery*: every equation that consumes a parameter leaf θ directly is a
   *use*; its constant inputs (residuals, literals) are kept for the rules.
   Call-like equations (``jit``, ``remat``, ``custom_jvp_call``...) are
   walked in line, so uses inside them are found too.
2. *probing*: the same walk as a function of one *probe* per use output,
   with θ set to zero and each use's output replaced by (its other
   tangents' contribution +) its probe. The network's output is linear in the
   probes and ``∂out/∂probe_u = ∂out/∂y_u``, so ``jax.linear_transpose`` of
   this function, vmapped over a basis of output cotangents, gives every
   ``C_u = ∂f/∂y_u`` at once (one reverse pass per output entry), for any
   primitive JAX can transpose (scan, cond, while, custom_lin included).

Each use's :class:`Structure` comes from the rule table; the result is the
rule-mapped cotangents and factors as arrays, plus a static description in a
:class:`SideSpec`. Everything works under an outer ``jax.vmap`` (per-example
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
from autontk.methods.structured.structure import (Factor, IndexFactor,
                                                  Structure, dense)

_LIVE = object()  # discovery-time value of a tangent that depends on θ


@dataclasses.dataclass(frozen=True)
class _Const:
  value: Any


@dataclasses.dataclass(frozen=True)
class _Param:
  index: int


@dataclasses.dataclass(frozen=True)
class Lineage:
  """Which probes a tangent holds, during discovery.

  ``ident`` maps a probe to ±1 where the tangent *is* ``±probe + (terms
  without it)``: reached through sums, negations and casts only. ``other``
  holds the probes that reach it any other way.
  """

  ident: tuple[tuple[int, float], ...] = ()
  other: frozenset[int] = frozenset()

  def keys(self) -> set[int]:
    return {k for k, _ in self.ident} | set(self.other)


def _mixed(lineages: Sequence[Lineage]) -> Lineage:
  return Lineage((), frozenset().union(*[l.keys() for l in lineages]))


def _summed(lineages: Sequence[Lineage], signs: Sequence[float]) -> Lineage:
  ident: dict[int, float] = {}
  other: set[int] = set()
  for l, sign in zip(lineages, signs):
    other |= l.other
    for k, s in l.ident:
      if k in ident:
        other.add(k)
      else:
        ident[k] = s * sign
  return Lineage(tuple((k, s) for k, s in sorted(ident.items())
                       if k not in other), frozenset(other))


def _non_unit(shape) -> tuple[int, ...]:
  return tuple(d for d in shape if d != 1)


def _passes_signed(eqn) -> tuple[float, ...] | None:
  """Per input, its sign if the output is a signed sum of the inputs with
  unchanged entries (see :class:`rule_table.PrimitiveFacts`), else ``None``."""
  facts = rule_table.facts(eqn.primitive)
  out_shape = _non_unit(eqn.outvars[0].aval.shape)
  if facts.additive is not None:
    if all(_non_unit(v.aval.shape) == out_shape for v in eqn.invars):
      return facts.additive
    return None
  if facts.unit_axes and eqn.invars:
    if _non_unit(eqn.invars[0].aval.shape) == out_shape:
      return (1.0,) + (0.0,) * (len(eqn.invars) - 1)
  return None


@dataclasses.dataclass(frozen=True)
class _Lin:
  value: Any  # an array, None (a zero tangent), or _LIVE during discovery
  lineage: Lineage = Lineage()


@dataclasses.dataclass(frozen=True)
class Use:
  """Parameter ``param`` consumed by the equation behind probe ``probe``."""

  probe: int
  param: int
  ctx: rule_table.UseContext | None  # None: θ is itself an output


class _Walk:
  """One interpretation of a linear jaxpr (discovery, or with probes)."""

  def __init__(self, probes: Sequence[Sequence[jax.Array]] | None = None,
               constants: list[list[Any]] | None = None):
    self.probes = probes
    self.uses: list[Use] = []
    self.probe_avals: list[tuple[Any, ...]] = []
    # Outputs of constant equations, in walk order: computed once during
    # discovery and reused when probing (a smaller program to compile).
    self.constants = [] if constants is None else constants
    self._n_const = 0

  @property
  def discovering(self) -> bool:
    return self.probes is None

  def run(self, jaxpr, consts: Sequence[Any], args: Sequence[Any]) -> list:
    env: dict[Any, Any] = {}

    def read(v):
      if _compat.is_literal(v):
        return _Const(v.val)
      return env[v]

    for v, c in zip(jaxpr.constvars, consts):
      env[v] = c if isinstance(c, (_Const, _Param, _Lin)) else _Const(c)
    for v, a in zip(jaxpr.invars, args):
      env[v] = a
    for eqn in jaxpr.eqns:
      outs = self._eqn(eqn, [read(v) for v in eqn.invars])
      for v, o in zip(eqn.outvars, outs):
        if not _compat.is_drop_var(v):
          env[v] = o
    return [read(v) for v in jaxpr.outvars]

  def _eqn(self, eqn, ins: list) -> list:
    if all(isinstance(x, _Const) for x in ins):
      k = self._n_const
      self._n_const += 1
      if k == len(self.constants):
        self.constants.append(_compat.bind(eqn, *[x.value for x in ins]))
      return [_Const(o) for o in self.constants[k]]
    body = _compat.inline_body(eqn)
    if body is not None:
      jaxpr, consts = body
      return self.run(jaxpr, consts, ins)
    if (rule_table.facts(eqn.primitive).passes_param and len(ins) == 1 and
        isinstance(ins[0], _Param) and _inexact(eqn.outvars[0].aval)):
      # y = θ (placed or cast, e.g. mixed precision): y's uses are θ's uses,
      # so the layer that consumes it keeps its structure.
      return ins
    if any(isinstance(x, _Param) for x in ins):
      return self._use(eqn, ins)
    return self._linear(eqn, ins)

  def _bind_zeros(self, eqn, ins: list) -> list:
    """Binds with θ, unknown and zero tangents as zeros."""
    args = []
    for x, v in zip(ins, eqn.invars):
      if isinstance(x, _Const):
        args.append(x.value)
      elif isinstance(x, _Lin) and x.value is not None and x.value is not _LIVE:
        args.append(x.value)
      else:
        args.append(jnp.zeros(v.aval.shape, v.aval.dtype))
    return _compat.bind(eqn, *args)

  def _lineage(self, eqn, ins: list, probe_index: int | None) -> Lineage:
    lins = [x.lineage for x in ins if isinstance(x, _Lin)]
    signs = _passes_signed(eqn) if len(eqn.outvars) == 1 else None
    if signs is not None:
      pairs = [(x.lineage, sg) for x, sg in zip(ins, signs)
               if isinstance(x, _Lin)]
      out = _summed([l for l, _ in pairs], [sg for _, sg in pairs])
    else:
      out = _mixed(lins)
    if probe_index is not None:
      if len(eqn.outvars) == 1:
        out = _summed([out, Lineage(((probe_index, 1.0),))], [1.0, 1.0])
      else:
        out = _mixed([out, Lineage(((probe_index, 1.0),))])
    return out

  def _outputs(self, eqn, ins: list, probe: Sequence[Any] | None,
               probe_index: int | None = None) -> list:
    """Outputs of an equation with tangent inputs (plus its probes, if any).

    Non-float outputs (a loop counter of a ``while`` that linearisation
    kept whole) do not depend on tangents: they are constants.
    """
    floats = [_inexact(v.aval) for v in eqn.outvars]
    lineage = (self._lineage(eqn, ins, probe_index) if self.discovering
               else None)
    live = not all(isinstance(x, _Const) or isinstance(x, _Param) or
                   x.value is None for x in ins)
    need_bind = (not all(floats) or
                 (not self.discovering and live))
    outs = self._bind_zeros(eqn, ins) if need_bind else [None] * len(floats)
    result, probes = [], iter(probe or ())
    for is_float, o in zip(floats, outs):
      if not is_float:
        result.append(_Const(o))
      elif self.discovering:
        result.append(_Lin(_LIVE, lineage))
      else:
        p = next(probes) if probe is not None else None
        if p is None:
          result.append(_Lin(o if live else None))
        else:
          result.append(_Lin(p if not live else o + p))
    return result

  def _linear(self, eqn, ins: list) -> list:
    return self._outputs(eqn, ins, None)

  def _new_probe(self, avals: tuple[Any, ...]) -> int:
    self.probe_avals.append(avals)
    return len(self.probe_avals) - 1

  def _use(self, eqn, ins: list) -> list:
    k = self._new_probe(tuple(v.aval for v in eqn.outvars
                              if _inexact(v.aval)))
    if self.discovering:
      inputs = tuple(x.value if isinstance(x, _Const) else None for x in ins)
      in_avals = tuple(v.aval for v in eqn.invars)
      out_avals = tuple(v.aval for v in eqn.outvars)
      for pos, x in enumerate(ins):
        if isinstance(x, _Param):
          ctx = rule_table.UseContext(eqn, pos, inputs, in_avals, out_avals)
          self.uses.append(Use(k, x.index, ctx))
      return self._outputs(eqn, ins, None, k)
    return self._outputs(eqn, ins, self.probes[k])

  def outputs(self, outs: list, theta_avals: Sequence[Any]) -> list:
    """Top-level outputs; an output that *is* a parameter gets its probe."""
    result = []
    for o in outs:
      if isinstance(o, _Param):
        k = self._new_probe((theta_avals[o.index],))
        if self.discovering:
          self.uses.append(Use(k, o.index, None))
          o = _Lin(_LIVE, Lineage(((k, 1.0),)))
        else:
          o = _Lin(self.probes[k][0])
      result.append(o)
    return result


def _inexact(aval) -> bool:
  return jnp.issubdtype(aval.dtype, jnp.inexact)


# Static description of one side --------------------------------------------


@dataclasses.dataclass(frozen=True)
class FactorSpec:
  labels: tuple[int, ...]
  index_label: int | None = None  # set for an IndexFactor
  index_size: int = 0


@dataclasses.dataclass(frozen=True)
class UseSpec:
  """Static part of one (possibly merged) use: labels and factor kinds."""

  param: int
  theta_labels: tuple[int, ...]
  cot_labels: tuple[int, ...]
  factors: tuple[FactorSpec, ...]
  primitive: str  # the primitive's name ("+"-joined for merged uses)
  # Per output leaf: ±1 where the use's output *is* that leaf (up to sign and
  # terms without it), so its cotangent is the identity and is not stored.
  identity: tuple[float | None, ...] = ()
  out_shape: tuple[int, ...] = ()  # the use's output shape (for identity)


@dataclasses.dataclass
class SideSpec:
  """Filled while tracing :func:`analyse`.

  Attributes:
    uses: one :class:`UseSpec` per entry of the returned arrays.
    live: per output leaf, whether it depends on the parameters at all.
  """

  uses: list[UseSpec] = dataclasses.field(default_factory=list)
  live: list[bool] = dataclasses.field(default_factory=list)


def _spec_of(s: Structure, param: int, name: str) -> UseSpec:
  fs = []
  for f in s.factors:
    if isinstance(f, IndexFactor):
      fs.append(FactorSpec(f.labels, f.label, f.size))
    else:
      fs.append(FactorSpec(f.labels))
  return UseSpec(param, s.theta_labels, s.cot_labels, tuple(fs), name)


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


def _probe_cotangents(closed, walk: _Walk, params: list, theta_avals,
                      layout: _OutputLayout) -> list[list[jax.Array]]:
  """Per probe, ``∂out/∂probe`` (one row per live output entry)."""
  probe_avals = walk.probe_avals
  flat_avals = [jax.ShapeDtypeStruct(a.shape, a.dtype)
                for avals in probe_avals for a in avals]
  splits = [len(avals) for avals in probe_avals]

  def probed(*flat):
    it = iter(flat)
    probes = [[next(it) for _ in range(n)] for n in splits]
    w = _Walk(probes, walk.constants)
    res = w.outputs(w.run(closed.jaxpr, closed.consts, params), theta_avals)
    return [res[i].value for i in layout.live]

  try:
    transpose = jax.linear_transpose(probed, *flat_avals)
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


def _structure(use: Use, theta_avals, config) -> tuple[Structure, str]:
  if use.ctx is None:
    return dense(len(theta_avals[use.param].shape)), "identity"
  s = rule_table.resolve(use.ctx, config.structure_rules,
                         config.jacobian_rules, config.strict)
  return s, str(use.ctx.primitive)


@dataclasses.dataclass
class _Collected:
  """Uses resolved to arrays: dense ones summed per parameter."""

  dense: dict[int, jax.Array] = dataclasses.field(default_factory=dict)
  dense_names: dict[int, list[str]] = dataclasses.field(default_factory=dict)
  structured: list[tuple[UseSpec, list, Any, set]] = dataclasses.field(
      default_factory=list)

  def add_dense(self, param: int, mapped: jax.Array, name: str) -> None:
    # Uses whose Jacobian is materialised anyway are summed first: their
    # pairs then cost one contraction per parameter.
    self.dense[param] = (mapped if param not in self.dense else
                         self.dense[param] + mapped)
    self.dense_names.setdefault(param, []).append(name)


def _collect_use(use: Use, c: list, outs: list, layout: _OutputLayout,
                 theta_avals, config, into: _Collected) -> None:
  s, name = _structure(use, theta_avals, config)
  single = c[0] if len(c) == 1 and (use.ctx is None or
                                    not use.ctx.primitive.multiple_results
                                    ) else tuple(c)
  absent, ident = _reach(outs, layout, use.probe)
  factors = [_factor_array(f) for f in s.factors]
  if ident and s.cot_map is None and len(c) == 1:
    identity = tuple(ident.get(i) for i in range(len(outs)))
    out_shape = (tuple(theta_avals[use.param].shape) if use.ctx is None
                 else tuple(use.ctx.out_aval.shape))
    u = dataclasses.replace(_spec_of(s, use.param, name), identity=identity,
                            out_shape=out_shape)
    into.structured.append((u, factors, single, absent | set(ident)))
    return
  mapped = single if s.cot_map is None else jax.vmap(s.cot_map)(single)
  if s.is_dense:
    into.add_dense(use.param, mapped, name)
  else:
    into.structured.append((_spec_of(s, use.param, name), factors, mapped,
                            absent))


def _assemble(collected: _Collected, layout: _OutputLayout, theta_avals,
              spec: SideSpec) -> list[tuple[list, list]]:
  result = []
  for p, mapped in sorted(collected.dense.items()):
    labels = tuple(range(len(theta_avals[p].shape)))
    spec.uses.append(UseSpec(p, labels, labels, (),
                             "+".join(collected.dense_names[p])))
    result.append((layout.per_leaf(mapped), []))
  for u, factors, mapped, skip in collected.structured:
    spec.uses.append(u)
    result.append((layout.per_leaf(mapped, skip), factors))
  return result


def analyse(fun: Callable[..., list[jax.Array]], theta: Sequence[jax.Array],
            config: Any, spec: SideSpec) -> list[tuple[list, list]]:
  """Structured Jacobian pieces of ``fun(*theta)`` (a list of output leaves).

  Args:
    fun: ``fun(*theta) -> list of output arrays``, shapes ``o_L``.
    theta: the parameter leaves.
    config: a ``StructuredConfig``.
    spec: filled with the static description (reset first).

  Returns:
    Per use (merged dense uses first, per parameter), ``(cots, factors)``:
    ``cots[L]`` is ``cot_map(C)`` for output leaf ``L``, shape
    ``o_L + cot dims``, or ``None`` where the use does not reach leaf ``L``
    or reaches it as the identity (then ``spec.uses[i].identity[L]`` holds
    the sign); ``factors`` are the factor arrays (indices for index
    factors).
  """
  spec.uses.clear()
  spec.live.clear()
  theta = tuple(theta)
  closed = _compat.linear_jaxpr(fun, theta)
  theta_avals = [v.aval for v in closed.jaxpr.invars]
  params = [_Param(i) for i in range(len(theta))]

  walk = _Walk()
  outs = walk.outputs(walk.run(closed.jaxpr, closed.consts, params),
                      theta_avals)
  live = [isinstance(o, _Lin) and o.value is _LIVE for o in outs]
  spec.live.extend(live)
  if not walk.uses or not any(live):
    return []
  layout = _OutputLayout(tuple(v.aval for v in closed.jaxpr.outvars),
                         tuple(i for i, l in enumerate(live) if l))
  cots = _probe_cotangents(closed, walk, params, theta_avals, layout)
  collected = _Collected()
  for use in walk.uses:
    _collect_use(use, cots[use.probe], outs, layout, theta_avals, config,
                 collected)
  return _assemble(collected, layout, theta_avals, spec)


def _forward_cotangents(probed, flat_avals, layout: _OutputLayout) -> list:
  zeros = [jnp.zeros(a.shape, a.dtype) for a in flat_avals]
  jac = jax.jacfwd(probed, argnums=tuple(range(len(zeros))))(*zeros)
  cots = []
  for k, a in enumerate(flat_avals):
    rows = [jac[j][k].reshape((n,) + a.shape)
            for j, n in enumerate(layout.sizes)]
    cots.append(jnp.concatenate(rows, axis=0))
  return cots
