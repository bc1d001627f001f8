"""One interpretation of a linear jaxpr: discovery, or probing.

The interpreter (:mod:`.interpreter`) walks the linearised network twice.
*Discovery* finds every *use* of a parameter leaf θ (an equation consuming θ
or a view of it) and decides, per equation touching θ, what it is: a view
(:mod:`.regions`), a pass-through, a use with a probe, or a loop / branch
walked structurally (:mod:`.control_flow`). The decisions form a *plan*, a list of
steps in walk order. *Probing* walks again as a function of the probes,
replaying the plan, so both walks agree even where discovery read values
known only at trace time.

Inside a loop body, discovery sees every constant with one leading axis per
enclosing loop (size 1 where it does not vary): a use there is a stack of
per-iteration uses. Probing instead runs inside the rebuilt loop and sees
one iteration at a time.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autontk import _compat
from autontk.methods.structured import control_flow, rule_table
from autontk.methods.structured.regions import Region
from autontk.methods.structured.values import (LIVE, Const, Lin, Lineage,
                                               Param, PassStep, Registry, Use,
                                               UseStep, ViewStep, WalkOptions,
                                               inexact, lift, mixed, summed,
                                               over_levels)

_P = _compat.primitives


class Walk:
  """Interprets a linear jaxpr: discovery (with a registry) or probing.

  Args:
    options: which structure to follow.
    registry: set when discovering: uses and probes are recorded there.
    probes: when probing, probe index -> list of arrays (one per output).
    plan: when probing, the discovery walk's plan to replay.
    constants: outputs of constant equations in walk order, shared by a
      top-level discovery and its probing (computed once); ``None`` in loop
      bodies, where constants are per iteration.
    lengths: trip counts of the enclosing loops (discovery in a body).
  """

  def __init__(self, options: WalkOptions, *, registry: Registry | None = None,
               probes: dict[int, list] | None = None,
               plan: Sequence[Any] | None = None,
               constants: list[list[Any]] | None = None,
               lengths: tuple[int, ...] = ()):
    self.options = options
    self.registry = registry
    self.probes = probes
    self.plan: list[Any] = [] if plan is None else list(plan)
    self.constants = constants
    self.lengths = lengths
    self._cursor = 0
    self._n_const = 0

  @property
  def discovering(self) -> bool:
    return self.registry is not None

  def child(self, lengths: tuple[int, ...] | None = None,
            plan: Sequence[Any] | None = None,
            probes: dict[int, list] | None = None,
            options: WalkOptions | None = None) -> "Walk":
    """A walk of a loop body or branch (its own plan, no constant cache)."""
    options = options or self.options
    if self.discovering:
      return Walk(options, registry=self.registry,
                  lengths=self.lengths if lengths is None else lengths)
    return Walk(options, probes=probes, plan=plan)

  def run(self, jaxpr, consts: Sequence[Any], args: Sequence[Any],
          also: Sequence[Any] = ()) -> list:
    """The jaxpr's outputs as walk values, then those of the variables
    ``also`` (inner variables of the jaxpr, e.g. an output head's input)."""
    env: dict[Any, Any] = {}
    depth = len(self.lengths)

    def read(v):
      if _compat.is_literal(v):
        return Const(lift(v.val, depth))
      return env[v]

    for v, c in zip(jaxpr.constvars, consts):
      env[v] = c if isinstance(c, (Const, Param, Lin)) else Const(
          lift(c, depth))
    for v, a in zip(jaxpr.invars, args):
      env[v] = a
    for eqn in jaxpr.eqns:
      outs = self._eqn(eqn, [read(v) for v in eqn.invars])
      for v, o in zip(eqn.outvars, outs):
        if not _compat.is_drop_var(v):
          env[v] = o
    return [read(v) for v in list(jaxpr.outvars) + list(also)]

  def _eqn(self, eqn, ins: list) -> list:
    if all(isinstance(x, Const) for x in ins):
      return [Const(o) for o in self._constant(eqn, ins)]
    body = _compat.inline_body(eqn)
    if body is not None:
      jaxpr, consts = body
      return self.run(jaxpr, consts, ins)
    if any(isinstance(x, Param) for x in ins):
      return self._with_param(eqn, ins)
    return self._outputs(eqn, ins, None)

  # Constants ----------------------------------------------------------------

  def _constant(self, eqn, ins: list) -> list:
    if self.constants is None:
      return self._evaluate(eqn, [x.value for x in ins])
    k = self._n_const
    self._n_const += 1
    if k == len(self.constants):
      self.constants.append(self._evaluate(eqn, [x.value for x in ins]))
    return self.constants[k]

  def _evaluate(self, eqn, values: list) -> list:
    """Binds on constants; integer results of known inputs stay known (loop
    counters, indices), so views can read them at trace time."""
    known = (all(_compat.concrete(v) is not None for v in values) and
             not any(inexact(v.aval) for v in eqn.outvars))
    bind = lambda *a: rule_table.evaluate(eqn, *a)  # noqa: E731
    if not known:
      return list(over_levels(bind, values, self.lengths))
    with _compat.compile_time_eval():
      outs = over_levels(bind, values, self.lengths)
    return [np.asarray(o) for o in outs]

  # Equations touching θ -----------------------------------------------------

  def _with_param(self, eqn, ins: list) -> list:
    if not self.discovering:
      step = self.plan[self._cursor]
      self._cursor += 1
      return self._replay(step, eqn, ins)
    at = len(self.plan)
    self.plan.append(None)  # the step precedes any steps walked in line
    step, outs = self._discover(eqn, ins)
    self.plan[at] = step
    return outs

  def _discover(self, eqn, ins: list) -> tuple[Any, list]:
    if (rule_table.facts(eqn.primitive).passes_param and len(ins) == 1 and
        inexact(eqn.outvars[0].aval)):
      # y = θ (placed or cast, e.g. mixed precision): y's uses are θ's uses,
      # so the layer that consumes it keeps its structure.
      return PassStep(), ins
    if self.options.views:
      region = self._view(eqn, ins)
      if region is not None:
        param = next(x for x in ins if isinstance(x, Param))
        return ViewStep(region), [Param(param.index, region)]
    if self.options.loops:
      found = control_flow.discover(self, eqn, ins)
      if found is not None:
        return found
    k = self.registry.new_probe(self._probe_avals(eqn.outvars))
    return UseStep(k), self._discover_use(eqn, ins, k)

  def _replay(self, step, eqn, ins: list) -> list:
    if isinstance(step, PassStep):
      return ins
    if isinstance(step, ViewStep):
      param = next(x for x in ins if isinstance(x, Param))
      return [Param(param.index, step.region)]
    if isinstance(step, UseStep):
      return self._outputs(eqn, ins, self.probes[step.probe])
    return control_flow.replay(self, step, eqn, ins)

  def _probe_avals(self, outvars) -> list:
    return [jax.ShapeDtypeStruct(self.lengths + tuple(v.aval.shape),
                                 v.aval.dtype)
            for v in outvars if inexact(v.aval)]

  def _discover_use(self, eqn, ins: list, k: int) -> list:
    inputs = tuple(x.value if isinstance(x, Const) else None for x in ins)
    in_avals = tuple(v.aval for v in eqn.invars)
    out_avals = tuple(v.aval for v in eqn.outvars)
    for pos, x in enumerate(ins):
      if isinstance(x, Param):
        ctx = rule_table.UseContext(eqn, pos, inputs, in_avals, out_avals)
        self.registry.uses.append(Use(k, x.index, x.region, ctx,
                                      self.lengths))
    return self._outputs(eqn, ins, None, k)

  def _view(self, eqn, ins: list) -> Region | None:
    """The region of the output if the equation only views θ."""
    params = [(i, x) for i, x in enumerate(ins) if isinstance(x, Param)]
    if len(params) != 1 or any(isinstance(x, Lin) for x in ins):
      return None
    pos, param = params[0]
    known = [_compat.concrete(x.value) if isinstance(x, Const) else None
             for x in ins]
    in_avals = tuple(v.aval for v in eqn.invars)
    out_avals = tuple(v.aval for v in eqn.outvars)

    def view_at(at: tuple[int, ...]):
      inputs = tuple(None if k is None else k[tuple(
          a if n != 1 else 0 for a, n in zip(at, k.shape))] for k in known)
      ctx = rule_table.UseContext(eqn, pos, inputs, in_avals, out_avals)
      return rule_table.view_of(ctx)

    return _stacked_view(view_at, known, self.lengths, param.region)

  # Tangent outputs ----------------------------------------------------------

  def _bind_zeros(self, eqn, ins: list) -> list:
    """Binds with θ, unknown and zero tangents as zeros."""
    depth = len(self.lengths)
    args = []
    for x, v in zip(ins, eqn.invars):
      if isinstance(x, Const):
        args.append(x.value)
      elif isinstance(x, Lin) and x.value is not None and x.value is not LIVE:
        args.append(x.value)
      else:
        args.append(lift(jnp.zeros(v.aval.shape, v.aval.dtype), depth))
    return list(over_levels(lambda *a: rule_table.evaluate(eqn, *a), args,
                            self.lengths))

  def _lineage(self, eqn, ins: list, probe_index: int | None) -> Lineage:
    lins = [x.lineage for x in ins if isinstance(x, Lin)]
    signs = None
    if len(eqn.outvars) == 1:
      signs = _passes_signed(eqn) or _scaled_by_constant(eqn, ins)
    if signs is not None:
      pairs = [(x.lineage, sg) for x, sg in zip(ins, signs)
               if isinstance(x, Lin)]
      out = summed([l for l, _ in pairs], [sg for _, sg in pairs])
    else:
      out = mixed(lins)
    if probe_index is not None:
      if len(eqn.outvars) == 1:
        out = summed([out, Lineage(((probe_index, 1.0),))], [1.0, 1.0])
      else:
        out = mixed([out], [probe_index])
    return out

  def _outputs(self, eqn, ins: list, probe: Sequence[Any] | None,
               probe_index: int | None = None) -> list:
    """Outputs of an equation with tangent inputs (plus its probes, if any).

    Non-float outputs (a loop counter of a ``while`` that linearisation
    kept whole) do not depend on tangents: they are constants.
    """
    floats = [inexact(v.aval) for v in eqn.outvars]
    lineage = (self._lineage(eqn, ins, probe_index) if self.discovering
               else None)
    live = not all(isinstance(x, (Const, Param)) or x.value is None
                   for x in ins)
    need_bind = not all(floats) or (not self.discovering and live)
    outs = self._bind_zeros(eqn, ins) if need_bind else [None] * len(floats)
    result, probes = [], iter(probe or ())
    for is_float, o in zip(floats, outs):
      if not is_float:
        result.append(Const(o))
      elif self.discovering:
        result.append(Lin(LIVE, lineage))
      else:
        p = next(probes) if probe is not None else None
        if p is None:
          result.append(Lin(o if live else None))
        else:
          result.append(Lin(p if not live else o + p))
    return result

  def tangents(self, outs: list) -> list:
    """Outputs of a jaxpr as tangents: a parameter returned as is (a network
    output, a loop carry) becomes an identity use with its own probe."""
    result = []
    for o in outs:
      if isinstance(o, Param):
        o = self.param_tangent(o)
      result.append(o)
    return result

  def param_tangent(self, param: Param) -> Lin:
    """θ (or a view of it) entering linear code as a tangent."""
    if not self.discovering:
      step = self.plan[self._cursor]
      self._cursor += 1
      return Lin(self.probes[step.probe][0])
    k = self.identity_use(param)
    self.plan.append(UseStep(k))
    return Lin(LIVE, Lineage(((k, 1.0),)))

  def identity_use(self, param: Param) -> int:
    """Records the use ``y = θ`` (a view of it) with a new probe."""
    dtype = self.registry.theta_avals[param.index].dtype
    k = self.registry.new_probe([jax.ShapeDtypeStruct(
        self.lengths + param.region.value_shape, dtype)])
    self.registry.uses.append(Use(k, param.index, param.region, None,
                                  self.lengths))
    return k


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


def _scaled_by_constant(eqn, ins: list) -> tuple[float, ...] | None:
  """Per input, its factor when the output is a tangent times (or over) a
  scalar known at trace time (a logit scale ``h @ Eᵀ / √d``), else
  ``None``: a use reaching an output through it keeps an identity
  cotangent, scaled."""
  if eqn.primitive not in (_P.mul_p, _P.div_p) or len(ins) != 2:
    return None
  lin = [isinstance(x, Lin) for x in ins]
  if lin.count(True) != 1 or (eqn.primitive is _P.div_p and not lin[0]):
    return None
  pos = lin.index(True)
  other = ins[1 - pos]
  value = (_compat.concrete(other.value) if isinstance(other, Const)
           else None)
  if value is None or np.size(value) != 1:
    return None
  c = float(np.reshape(value, ()))
  if c == 0.0 or eqn.outvars[0].aval.shape != eqn.invars[pos].aval.shape:
    return None
  scale = c if eqn.primitive is _P.mul_p else 1.0 / c
  return tuple(scale if i == pos else 0.0 for i in range(2))


def _stacked_view(view_at: Callable, known: list, lengths: tuple[int, ...],
                  region: Region) -> Region | None:
  """The region a view makes, when its known inputs may vary by iteration.

  Inputs that vary along one enclosing loop must pick one position of one
  axis per iteration, distinct across iterations (``θ[i]`` in a
  ``fori_loop``): that axis becomes indexed by the loop.
  """
  depth = len(lengths)
  varying = sorted({lvl for k in known if k is not None
                    for lvl in range(depth) if k.shape[lvl] != 1})
  if not varying:
    vm = view_at((0,) * depth)
    return None if vm is None else region.view(vm)
  if len(varying) != 1:
    return None
  level = varying[0]
  maps = []
  for t in range(lengths[level]):
    maps.append(view_at(tuple(t if lvl == level else 0
                              for lvl in range(depth))))
  if any(m is None for m in maps):
    return None
  first = maps[0]
  moving = [j for j in range(len(first.picks))
            if any(m.picks[j] != first.picks[j] for m in maps)]
  if (len(moving) != 1 or any(m.source != first.source for m in maps) or
      any(len(m.picks[moving[0]]) != 1 for m in maps)):
    return None
  j = moving[0]
  looped = region.loop_over(j, level, [m.picks[j][0] for m in maps])
  if looped is None:
    return None
  picks = first.picks[:j] + (range(1),) + first.picks[j + 1:]
  return looped.view(dataclasses.replace(first, picks=picks))
