"""Loops and branches that touch θ, walked structurally.

``scan`` (and so ``fori_loop`` with a static trip count, flax's
``nn.scan`` / ``nnx.scan``, equinox layers scanned with ``lax.scan``):
discovery walks the body once with every constant stacked over the
iterations (:func:`.values.over_levels`), so a use inside the body is a
stack of per-iteration uses whose structure carries the iteration as a
label. A parameter entering as ``xs`` is sliced per iteration: that leaf
axis is indexed by the loop (:meth:`.regions.Region.loop_over`) and the
label is shared by θ, the cotangent and the factors, so different
iterations never meet in a pair product. A parameter entering as a loop
constant (an RNN's weight) is one leaf used at every iteration: the label is
summed. Probing rebuilds the ``scan`` with each body use's probe as an
extra ``xs`` (same ``length``, ``reverse`` and ``unroll``); JAX's transpose
of it gives every iteration's cotangent at once.

``while`` with a trip count known at trace time (the carries its condition
reads start from known values and evolve from known values, as in
``fori_loop`` with traced bounds that are in fact constants): linearisation
keeps such a loop whole, primal and tangent parts together, and JAX cannot
transpose it. It is rewritten as a ``scan`` of that length and linearised
again, which splits the primal part off as per-iteration residuals; the
resulting linear ``scan`` is walked in line.

``cond`` / ``switch``: with a branch index known at trace time the branch
is walked in line; otherwise every branch is walked and probing rebuilds the
``switch`` with the probes as extra operands (a branch not taken gives its
uses zero cotangents).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from autontk import _compat
from autontk.methods.structured.values import (LIVE, BranchStep, CondStep,
                                               Const, Lin, LoopStep, Param,
                                               WhileStep, inexact, mixed)

_P = _compat.primitives


def discover(walk, eqn, ins: list) -> tuple[Any, list] | None:
  """Structured handling of a loop or branch touching θ, or ``None``."""
  if eqn.primitive is _P.scan_p:
    return _discover_scan(walk, eqn, ins)
  if eqn.primitive is _P.cond_p:
    return _discover_cond(walk, eqn, ins)
  if eqn.primitive is _P.while_p:
    return _discover_while(walk, eqn, ins)
  return None


def replay(walk, step, eqn, ins: list) -> list:
  """The probing counterpart of :func:`discover`'s step."""
  if isinstance(step, LoopStep):
    return _probe_scan(walk, step, eqn, ins)
  if isinstance(step, CondStep):
    return _probe_cond(walk, step, eqn, ins)
  if isinstance(step, WhileStep):
    return _walk_while(walk, step, eqn, ins)
  if isinstance(step, BranchStep):
    branch = eqn.params["branches"][step.branch]
    return walk.run(branch.jaxpr, branch.consts, ins[1:])
  raise TypeError(f"unknown plan step {step!r}")


def _array(x, aval) -> Any:
  """A probing-time value as an array (zeros for a zero tangent)."""
  if isinstance(x, Const) or (isinstance(x, Lin) and x.value is not None):
    return x.value
  return jnp.zeros(aval.shape, aval.dtype)


def _new_axis(value, level: int):
  if _compat.concrete(value) is not None:
    return np.expand_dims(np.asarray(value), level)
  return jnp.expand_dims(value, level)


# scan -----------------------------------------------------------------------


def _scan_kinds(eqn) -> list[str]:
  p = eqn.params
  nc, ncar = p["num_consts"], p["num_carry"]
  return (["const"] * nc + ["carry"] * ncar +
          ["xs"] * (len(eqn.invars) - nc - ncar))


def _scan_supported(eqn, ins: list) -> bool:
  if not all(inexact(v.aval) for v in eqn.outvars):
    return False
  for x, kind, v in zip(ins, _scan_kinds(eqn), eqn.invars):
    if kind == "carry" and not inexact(v.aval):
      return False
    if (kind == "xs" and isinstance(x, Param) and
        x.region.loop_over(0, 0) is None):
      return False
  return True


def _discover_scan(walk, eqn, ins: list) -> tuple[LoopStep, list] | None:
  if not _scan_supported(eqn, ins):
    return None
  level = len(walk.lengths)
  carried, body_in = [], []
  for i, (x, kind) in enumerate(zip(ins, _scan_kinds(eqn))):
    if kind == "carry" or isinstance(x, Lin):
      if isinstance(x, Param):
        carried.append((i, walk.identity_use(x)))
      body_in.append(Lin(LIVE))
    elif isinstance(x, Param):
      body_in.append(x if kind == "const" else
                     Param(x.index, x.region.loop_over(0, level)))
    elif kind == "const":  # invariant: a size-1 axis for the new loop
      body_in.append(Const(_new_axis(x.value, level)))
    else:
      body_in.append(x)  # xs: its leading axis is the new loop's
  before = len(walk.registry.probe_avals)
  child = walk.child(lengths=walk.lengths + (eqn.params["length"],))
  body = eqn.params["jaxpr"]
  child.tangents(child.run(body.jaxpr, body.consts, body_in))
  probes = tuple(range(before, len(walk.registry.probe_avals)))
  lineage = mixed([x.lineage for x in ins if isinstance(x, Lin)],
                  probes + tuple(k for _, k in carried))
  return (LoopStep(tuple(child.plan), probes, tuple(carried)),
          [Lin(LIVE, lineage) for _ in eqn.outvars])


def _probe_scan(walk, step: LoopStep, eqn, ins: list) -> list:
  p = eqn.params
  kinds = _scan_kinds(eqn)
  ins = list(ins)
  for i, k in step.carried:
    ins[i] = Lin(walk.probes[k][0])
  avals = [v.aval for v in eqn.invars]
  init = [_array(x, a) for x, a, kind in zip(ins, avals, kinds)
          if kind == "carry"]
  xs = [_array(x, a) for x, a, kind in zip(ins, avals, kinds)
        if kind == "xs" and not isinstance(x, Param)]
  probes = [walk.probes[k] for k in step.probes]
  body = p["jaxpr"]
  n_carry = p["num_carry"]

  def one(carry, scanned):
    xs_t, probes_t = scanned
    carry_it, xs_it = iter(carry), iter(xs_t)
    body_in = []
    for x, kind in zip(ins, kinds):
      if kind == "carry":
        body_in.append(Lin(next(carry_it)))
      elif isinstance(x, Param) or kind == "const":
        body_in.append(x)
      else:
        v = next(xs_it)
        body_in.append(Const(v) if isinstance(x, Const) else Lin(v))
    child = walk.child(plan=step.plan,
                       probes=dict(zip(step.probes, probes_t)),
                       options=inner)
    outs = child.tangents(child.run(body.jaxpr, body.consts, body_in))
    arrays = [_array(o, v.aval) for o, v in zip(outs, body.jaxpr.outvars)]
    return arrays[:n_carry], arrays[n_carry:]

  # Unrolling changes no value; a short loop unrolled compiles to the
  # straight-line program of separate layers (XLA:CPU runs some transposed
  # operations, convolutions above all, several times slower inside a
  # loop). Loops nested in it share the budget.
  length, budget = p["length"], walk.options.unroll_up_to
  unrolled = length <= budget
  inner = (dataclasses.replace(walk.options, unroll_up_to=budget // length)
           if unrolled else walk.options)
  carry, ys = lax.scan(one, init, (xs, probes), length=length,
                       reverse=p["reverse"],
                       unroll=True if unrolled else p["unroll"])
  return [Lin(v) for v in list(carry) + list(ys)]


# cond -----------------------------------------------------------------------


def _known_branch(walk, index: Const, n: int) -> int | None:
  known = _compat.concrete(index.value)
  if known is None or np.unique(known).size != 1:
    return None
  return int(np.clip(known.reshape(-1)[0], 0, n - 1))


def _discover_cond(walk, eqn, ins: list) -> tuple[Any, list] | None:
  index, operands = ins[0], ins[1:]
  branches = eqn.params["branches"]
  if not isinstance(index, Const) or not all(inexact(v.aval)
                                             for v in eqn.outvars):
    return None
  b = _known_branch(walk, index, len(branches))
  if b is not None:
    return BranchStep(b), walk.run(branches[b].jaxpr, branches[b].consts,
                                   operands)
  before = len(walk.registry.probe_avals)
  plans = []
  for branch in branches:
    child = walk.child()
    child.tangents(child.run(branch.jaxpr, branch.consts, operands))
    plans.append(tuple(child.plan))
  probes = tuple(range(before, len(walk.registry.probe_avals)))
  lineage = mixed([x.lineage for x in operands if isinstance(x, Lin)], probes)
  return (CondStep(tuple(plans), probes),
          [Lin(LIVE, lineage) for _ in eqn.outvars])


def _probe_cond(walk, step: CondStep, eqn, ins: list) -> list:
  index, operands = ins[0], ins[1:]
  branches = eqn.params["branches"]
  avals = [v.aval for v in eqn.invars[1:]]
  values = [None if isinstance(x, Param) else _array(x, a)
            for x, a in zip(operands, avals)]
  probes = [walk.probes[k] for k in step.probes]

  def make(b):
    def run(values, probes):
      body_in = [x if isinstance(x, Param) else
                 (Const(v) if isinstance(x, Const) else Lin(v))
                 for x, v in zip(operands, values)]
      child = walk.child(plan=step.plans[b],
                         probes=dict(zip(step.probes, probes)))
      branch = branches[b]
      outs = child.tangents(child.run(branch.jaxpr, branch.consts, body_in))
      return [_array(o, v.aval) for o, v in zip(outs, branch.jaxpr.outvars)]
    return run

  outs = lax.switch(index.value, [make(b) for b in range(len(branches))],
                    values, probes)
  return [Lin(v) for v in outs]


# while ----------------------------------------------------------------------


def _while_as_scan(eqn, fixed: list, trips: int):
  """``f(*floats)``: the loop's outputs, as a ``scan`` of ``trips`` steps,
  from its float inputs (the others are ``fixed``)."""
  p = eqn.params
  nc, nb = p["cond_nconsts"], p["body_nconsts"]
  body = p["body_jaxpr"]
  floats_at = [i for i, v in enumerate(eqn.invars) if inexact(v.aval)]

  def f(*floats):
    full = list(fixed)
    for i, x in zip(floats_at, floats):
      full[i] = x
    consts, init = full[nc:nc + nb], full[nc + nb:]

    def step(carry, _):
      return _compat.eval_closed(body, *consts, *carry), None

    out, _ = lax.scan(step, init, None, length=trips)
    return list(out)

  return f, floats_at


def _discover_while(walk, eqn, ins: list) -> tuple[WhileStep, list] | None:
  if walk.lengths or any(isinstance(x, Param) and x.region.loops
                         for x in ins):
    return None
  values = [x.value if isinstance(x, Const) else None for x in ins]
  trips = _compat.while_trip_count(eqn, values)
  if trips is None:
    return None
  point = [_array(x, v.aval) if isinstance(x, Const) else
           jnp.zeros(v.aval.shape, v.aval.dtype)
           for x, v in zip(ins, eqn.invars)]
  f, floats_at = _while_as_scan(eqn, point, trips)
  float_outs = [j for j, v in enumerate(eqn.outvars) if inexact(v.aval)]
  linear = _compat.linear_jaxpr(
      lambda *a: [f(*a)[j] for j in float_outs],
      tuple(point[i] for i in floats_at))
  step = WhileStep(linear, tuple(f(*[point[i] for i in floats_at])))
  return step, _walk_while(walk, step, eqn, ins)


def _walk_while(walk, step: WhileStep, eqn, ins: list) -> list:
  args = [x if isinstance(x, (Param, Lin)) else
          Const(jnp.zeros(v.aval.shape, v.aval.dtype))
          for x, v in zip(ins, eqn.invars) if inexact(v.aval)]
  tangents = iter(walk.run(step.linear.jaxpr, step.linear.consts, args))
  outs = []
  for primal, v in zip(step.primal, eqn.outvars):
    o = next(tangents) if inexact(v.aval) else None
    # No dependence on θ: the output's value is the primal loop's (a
    # zero tangent, or a primal carry the linear jaxpr still holds).
    outs.append(Const(primal) if o is None or isinstance(o, Const) else o)
  return outs
