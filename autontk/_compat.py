"""Every version-dependent touch of JAX internals, in one place.

``jax.extend`` promises no stability, so the rest of autontk imports only
``jax``, ``jax.numpy``, ``jax.lax`` and the names re-exported here. Each
difference between the supported releases (jax 0.6.0 to 0.10.2) is found by
feature detection, next to a comment naming the releases concerned:
``pjit`` is ``jit`` from 0.7, ``remat`` is ``remat2``, custom VJP functions
appear as ``custom_lin`` after ``jax.linearize``, and the symbolic zero-sum
of tangents is ``add_any``.

An internal that structured derivatives read and that this JAX does not
have (a newer release may rename it) never breaks ``import autontk``: it is
named by :func:`structured_support`, and only that method stops.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from typing import Any, Callable

import jax
import numpy as np
from jax.extend import core as jex_core
from jax.extend.core import primitives as jex_primitives

ClosedJaxpr = jex_core.ClosedJaxpr
Jaxpr = jex_core.Jaxpr
JaxprEqn = jex_core.JaxprEqn
Literal = jex_core.Literal
Primitive = jex_core.Primitive
Var = jex_core.Var

primitives = jex_primitives

# Internals structured derivatives need and this JAX lacks, by public name.
_MISSING: list[str] = []


def _lookup(name: str, *places: Callable[[], Any], needed: bool = True) -> Any:
  """The first of ``places`` that exists; ``None`` (recorded in
  ``_MISSING`` when ``needed``) if none does."""
  for place in places:
    try:
      return place()
    except (AttributeError, ImportError):
      continue
  if needed:
    _MISSING.append(name)
  return None


def _private(module: str, name: str) -> Callable[[], Any]:
  return lambda: getattr(importlib.import_module(module), name)


# jax >= 0.7 exports DropVar from jax.extend.core; jax 0.6 keeps it in core.
DropVar = _lookup("jax.extend.core.DropVar", lambda: jex_core.DropVar,
                  _private("jax._src.core", "DropVar"))

# Dead-code elimination of jaxprs (to find loop counters and indices known at
# trace time) has no public home in any release (0.6 to 0.10).
_dce_jaxpr = _lookup("partial_eval.dce_jaxpr", _private(
    "jax._src.interpreters.partial_eval", "dce_jaxpr"))
_convert_constvars = _lookup(
    "partial_eval.convert_constvars_jaxpr",
    _private("jax._src.interpreters.partial_eval", "convert_constvars_jaxpr"))


def _optional(name: str) -> Primitive | None:
  return getattr(jex_primitives, name, None)


# A jitted call is ``jit_p`` from jax 0.7; jax 0.6 has ``pjit_p``, exported
# only from its private module. Without it a jitted body takes the exact
# generic path (slower), so it is not needed.
JIT = _lookup("jit_p", lambda: jex_primitives.jit_p,
              lambda: jex_primitives.pjit_p,
              _private("jax._src.pjit", "pjit_p"), needed=False)
# ``jax.checkpoint`` binds ``remat_p`` (exported from jax 0.7; jax 0.6 keeps
# it in ``ad_checkpoint``).
REMAT = _lookup("remat_p", lambda: jex_primitives.remat_p,
                _private("jax._src.ad_checkpoint", "remat_p"), needed=False)

# Primitives whose body is evaluated in line: they only scope a sub-jaxpr.
# Keyed by object; missing ones (older or newer JAX) are skipped.
_INLINE_PARAM = {
    "closed_call_p": "call_jaxpr",
    "call_p": "call_jaxpr",
    "core_call_p": "call_jaxpr",
    "checkpoint_p": "jaxpr",
    "custom_jvp_call_p": "call_jaxpr",
    "custom_vjp_call_p": "call_jaxpr",
}
INLINE_PRIMITIVES: dict[Primitive, str] = {
    p: key for name, key in _INLINE_PARAM.items()
    if (p := _optional(name)) is not None
}
INLINE_PRIMITIVES.update({p: "jaxpr" for p in (JIT, REMAT) if p is not None})

# Primitives that return their single input unchanged (placement hints): a
# parameter passes through them as itself.
PASS_THROUGH: frozenset[Primitive] = frozenset(
    p for name in ("sharding_constraint_p",)
    if (p := _optional(name)) is not None)

# ``add_any`` sums tangents; it behaves like ``add`` on values.
ADD_ANY = _optional("add_jaxvals_p")


def structured_support() -> str | None:
  """``None`` where structured derivatives can read this JAX's internals;
  else what was not recognised (the method is then unavailable).

  >>> structured_support() is None
  True
  """
  missing = list(_MISSING)
  form = _linear_jaxpr_form()
  if form is not None:
    missing.append(form)
  return ", ".join(missing) or None


@functools.lru_cache(maxsize=8)
def _compiler_options_known(items: tuple[tuple[str, Any], ...]) -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(items)).lower(
        np.ones(2, np.float32)).compile()
  except Exception:  # noqa: BLE001 - an XLA without the option or value
    return False
  return True


def compiler_options_known(options: dict[str, Any]) -> bool:
  """This JAX's XLA compiles with ``options`` for the default backend
  (compiles a tiny program once per set of options): an option or an
  option's value one release has and another lacks."""
  return _compiler_options_known(tuple(sorted(options.items())))


# The parameters the interpreter reads from the equations of a linearised
# jaxpr, per primitive (the same on jax 0.6 to 0.10).
_READ_PARAMS = {"scan_p": ("jaxpr", "num_consts", "num_carry", "length",
                           "reverse", "unroll"),
                "dot_general_p": ("dimension_numbers",)}


@functools.cache
def _linear_jaxpr_form() -> str | None:
  """What differs from the expected form in the linearised jaxpr of a small
  network (a matrix product, a jitted call, a scan), or ``None``."""
  def net(w):
    h = jax.jit(jax.numpy.tanh)(jax.numpy.ones((2, 3)) @ w)
    return jax.lax.scan(lambda c, _: (c @ w, None), h, length=2)[0]

  def traced(w):  # traced only: nothing is compiled
    box.append(linear_jaxpr(net, (w,)))
    return w

  box = []
  try:
    jax.make_jaxpr(traced)(jax.ShapeDtypeStruct((3, 3), np.float32))
    closed = box[0]
    eqns = list(closed.jaxpr.eqns)
    ok = (isinstance(closed, ClosedJaxpr) and
          all(isinstance(v, Var) for v in closed.jaxpr.invars) and
          all(isinstance(e.primitive, Primitive) and
              all(isinstance(v, (Var, Literal)) for v in e.invars)
              for e in eqns))
  except Exception as e:  # noqa: BLE001 - any failure means "not recognised"
    return f"the linearised jaxpr ({type(e).__name__}: {e})"
  if not ok:
    return "the linearised jaxpr (its variables or equations)"
  for name, keys in _READ_PARAMS.items():
    p = _optional(name)
    for e in eqns:
      if e.primitive is p and not all(k in e.params for k in keys):
        return f"the parameters of {name} ({sorted(e.params)})"
  return None


def inline_body(eqn: JaxprEqn) -> tuple[Jaxpr, list[Any]] | None:
  """``(jaxpr, consts)`` of a call-like equation's body, or ``None``."""
  key = INLINE_PRIMITIVES.get(eqn.primitive)
  if key is None:
    return None
  body = eqn.params.get(key)
  if body is None:
    return None
  if isinstance(body, ClosedJaxpr):
    return body.jaxpr, list(body.consts)
  if isinstance(body, Jaxpr):
    return body, []
  return None


def is_literal(v: Any) -> bool:
  return isinstance(v, Literal)


def is_drop_var(v: Any) -> bool:
  return DropVar is not None and isinstance(v, DropVar)


# Where an equation came from (its name stack: the model's modules, autontk's
# own scopes), kept when an equation is evaluated again, so profiles of the
# compiled program name them. Optional: without it only the names go.
_source_info = _lookup("jax._src.source_info_util",
                       lambda: importlib.import_module(
                           "jax._src.source_info_util"), needed=False)


def _source_context(eqn: JaxprEqn):
  info = getattr(eqn, "source_info", None)
  try:
    return _source_info.user_context(
        info.traceback,
        name_stack=_source_info.current_name_stack() + info.name_stack)
  except (AttributeError, TypeError):  # an older or newer layout
    return contextlib.nullcontext()


def bind(eqn: JaxprEqn, *args: Any) -> list[Any]:
  """Evaluates one equation on the given inputs; always a list of outputs
  (the equation's source information kept)."""
  # jax >= 0.7: get_bind_params returns the params dict (it used to return
  # ``(subfuns, params)``).
  params = eqn.primitive.get_bind_params(eqn.params)
  with _source_context(eqn):
    if isinstance(params, tuple):  # pragma: no cover - older JAX
      subfuns, params = params
      out = eqn.primitive.bind(*subfuns, *args, **params)
    else:
      out = eqn.primitive.bind(*args, **params)
  return list(out) if eqn.primitive.multiple_results else [out]


def linear_jaxpr(fun, primals) -> ClosedJaxpr:
  """The jaxpr of ``fun``'s linearisation at ``primals`` (a tuple).

  Its invars are the tangents of ``primals``; its consts are the residuals
  (tracers when called under an outer transformation such as ``vmap``),
  except integer and boolean residuals that do not depend on ``primals`` or
  on anything traced (loop counters, constant indices): those are concrete
  NumPy arrays, so the interpreter can read them at trace time.
  """
  box = []

  def residuals(*p):
    _, lin = jax.linearize(fun, *p)
    closed = jax.make_jaxpr(lin)(*p)
    box.append(closed.jaxpr)
    return list(closed.consts)

  res = jax.make_jaxpr(residuals)(*primals)
  values = jax.core.eval_jaxpr(res.jaxpr, res.consts, *primals)
  for i, known in _known_outputs(res).items():
    values[i] = known
  return ClosedJaxpr(box[-1], values)


def _known_outputs(closed: ClosedJaxpr) -> dict[int, np.ndarray]:
  """Integer/boolean outputs of ``closed`` computable at trace time: from
  literals and from consts that are concrete arrays only."""
  jaxpr = closed.jaxpr
  ints = [i for i, v in enumerate(jaxpr.outvars)
          if not isinstance(v, Literal) and
          not np.issubdtype(v.aval.dtype, np.inexact)]
  if not ints:
    return {}
  known_consts = [concrete(c) for c in closed.consts]
  as_inputs = _convert_constvars(jaxpr)
  n_consts, n = len(jaxpr.constvars), len(jaxpr.outvars)

  def known(outputs: list[int]) -> list[np.ndarray] | None:
    used = [i in outputs for i in range(n)]
    dced, used_inputs = _dce_jaxpr(as_inputs, used)
    args = []
    for i, u in enumerate(used_inputs):
      if not u:
        continue
      if i >= n_consts or known_consts[i] is None:
        return None
      args.append(known_consts[i])
    return evaluate_now(lambda *a: jax.core.eval_jaxpr(dced, [], *a), args)

  together = known(ints)
  if together is not None:
    return dict(zip(ints, together))
  out = {}
  for i in _candidates(jaxpr, ints, known_consts):
    one = known([i])
    if one is not None:
      out[i] = one[0]
  return out


def _candidates(jaxpr: Jaxpr, outputs: list[int],
                known_consts: list[Any]) -> list[int]:
  """Outputs that may be known: those not reached by an unknown input,
  or reached only through a loop or call, which dead-code elimination may
  split (a loop counter carried next to data)."""
  unknown = {v for v, c in zip(jaxpr.constvars, known_consts) if c is None}
  unknown |= set(jaxpr.invars)
  maybe = set()
  for eqn in jaxpr.eqns:
    ins = {v for v in eqn.invars if not isinstance(v, Literal)}
    if ins & unknown:
      (maybe if _sub_jaxprs(eqn) else unknown).update(eqn.outvars)
    elif ins & maybe:
      maybe.update(eqn.outvars)
  return [i for i in outputs if jaxpr.outvars[i] not in unknown]


def _pruned(closed: ClosedJaxpr, used_outputs: list[bool]):
  """``closed`` reduced to the used outputs: ``(fn, used input indices)``
  with ``fn(*used inputs)`` evaluating it."""
  jaxpr = _convert_constvars(closed.jaxpr)
  dced, used = _dce_jaxpr(jaxpr, used_outputs)
  n_consts = len(closed.consts)
  consts = [c for c, u in zip(closed.consts, used[:n_consts]) if u]
  inputs = [i - n_consts for i, u in enumerate(used) if u and i >= n_consts]
  return (lambda *args: jax.core.eval_jaxpr(dced, [], *consts, *args)), inputs


def while_trip_count(eqn: JaxprEqn, inputs: list[Any],
                     limit: int = 100_000) -> int | None:
  """Iterations of a ``while`` equation, when known at trace time.

  The carries the condition depends on (and those they depend on, through
  the body) must start from known values and be computed from known
  values; the loop is then run on them alone.
  """
  p = eqn.params
  nc, nb = p["cond_nconsts"], p["body_nconsts"]
  cond_consts, body_consts, init = inputs[:nc], inputs[nc:nc + nb], inputs[
      nc + nb:]
  cond, used_c = _pruned(p["cond_jaxpr"], [True])
  carries = {i - nc for i in used_c if i >= nc}
  while True:
    used_out = [i in carries for i in range(len(init))]
    body, used_b = _pruned(p["body_jaxpr"], used_out)
    more = {i - nb for i in used_b if i >= nb} - carries
    if not more:
      break
    carries |= more
  known = [concrete(v) for v in cond_consts + body_consts + init]
  if any(known[i] is None for i in used_c if i < nc) or any(
      known[nc + i] is None for i in used_b if i < nb) or any(
          known[nc + nb + j] is None for j in carries):
    return None
  order = sorted(carries)
  state = {j: known[nc + nb + j] for j in order}
  for count in range(limit + 1):
    args = [known[i] if i < nc else state[i - nc] for i in used_c]
    if not bool(evaluate_now(cond, args)[0]):
      return count
    args = [known[nc + i] if i < nb else state[i - nb] for i in used_b]
    state = dict(zip(order, evaluate_now(body, args)))
  return None


def evaluate_now(fn, args: list[Any]) -> list[np.ndarray]:
  """``fn(*args)`` on arrays known at trace time, computed now (also under
  an outer ``jit`` or ``vmap``), as NumPy arrays."""
  try:
    with jax.ensure_compile_time_eval():
      return [np.asarray(v) for v in fn(*args)]
  except NotImplementedError:
    # jax 0.6 evaluates a scan in line there and fails on the `empty`
    # primitive it binds; a compiled program (which no outer trace sees)
    # computes the same values.
    return [np.asarray(v) for v in jax.jit(fn).lower(*args).compile()(*args)]


def concrete(value: Any) -> np.ndarray | None:
  """``value`` as a NumPy array if it is known at trace time, else None."""
  if isinstance(value, (np.ndarray, np.generic, int, float, bool)):
    return np.asarray(value)
  if isinstance(value, jax.Array) and not is_tracer(value):
    return np.asarray(value)
  return None


def compile_time_eval():
  """Evaluates JAX operations on known values now, even under ``jit``."""
  return jax.ensure_compile_time_eval()


# A custom_vjp function in a jaxpr, and the parameter holding its primal:
# ``custom_vjp_call_p`` / ``call_jaxpr`` from jax 0.7,
# ``custom_vjp_call_jaxpr_p`` / ``fun_jaxpr`` on jax 0.6.
_CUSTOM_VJP_BODY = {
    p: key for name, key in (("custom_vjp_call_p", "call_jaxpr"),
                             ("custom_vjp_call_jaxpr_p", "fun_jaxpr"))
    if (p := _optional(name)) is not None}
_JITS = tuple(p for p in (JIT, _optional("closed_call_p")) if p is not None)


def inline_custom_vjp(fun):
  """``fun`` with every ``custom_vjp`` function replaced by its primal
  computation (its custom backward rule ignored), at any depth: in line,
  inside ``jit``, and inside ``scan`` / ``while`` / ``cond`` bodies."""
  def inlined(*args):
    closed = jax.make_jaxpr(fun)(*args)
    return _eval_rewritten(closed.jaxpr, closed.consts, args, _custom_vjp_body)
  return inlined


def _custom_vjp_body(eqn: JaxprEqn) -> Callable[..., list[Any]] | None:
  if eqn.primitive not in _CUSTOM_VJP_BODY:
    return None
  body = eqn.params[_CUSTOM_VJP_BODY[eqn.primitive]]
  return lambda *ins: _eval_rewritten(body.jaxpr, body.consts, ins,
                                      _custom_vjp_body)


Rule = Callable[[JaxprEqn], "Callable[..., list[Any]] | None"]
"""Given an equation, the function that replaces it (inputs to the list of
outputs), or ``None`` to keep it."""


def rewrite_equations(fun, rule: Rule):
  """``fun`` (pytrees in and out) with each equation that ``rule`` replaces
  replaced, at any depth: in line, inside ``jit``, and inside the closed
  bodies of ``scan`` / ``while`` / ``cond``. Other nested bodies (``remat``,
  ``shard_map``) are kept as they are."""
  def rewritten(*args):
    closed, shape = jax.make_jaxpr(fun, return_shape=True)(*args)
    outs = _eval_rewritten(closed.jaxpr, closed.consts, jax.tree.leaves(args),
                           rule)
    return jax.tree.unflatten(jax.tree.structure(shape), outs)
  return rewritten


def _contains(jaxpr: Jaxpr, rule: Rule) -> bool:
  for eqn in jaxpr.eqns:
    if rule(eqn) is not None:
      return True
    for sub in _sub_jaxprs(eqn):
      if _contains(sub.jaxpr if isinstance(sub, ClosedJaxpr) else sub, rule):
        return True
  return False


def _sub_jaxprs(eqn: JaxprEqn) -> list[Any]:
  subs = []
  for v in eqn.params.values():
    items = v if isinstance(v, (tuple, list)) else (v,)
    subs += [x for x in items if isinstance(x, (ClosedJaxpr, Jaxpr))]
  return subs


def _rewritten_closed(closed: ClosedJaxpr, rule: Rule) -> ClosedJaxpr:
  avals = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in closed.in_avals]
  return jax.make_jaxpr(lambda *a: _eval_rewritten(
      closed.jaxpr, closed.consts, a, rule))(*avals)


def _eval_rewritten(jaxpr: Jaxpr, consts, args, rule: Rule) -> list[Any]:
  env = dict(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  read = lambda v: v.val if isinstance(v, Literal) else env[v]  # noqa: E731
  for eqn in jaxpr.eqns:
    ins = [read(v) for v in eqn.invars]
    if (replace := rule(eqn)) is not None:
      with _source_context(eqn):
        outs = replace(*ins)
    elif (eqn.primitive in _JITS and (body := inline_body(eqn)) is not None
          and _contains(body[0], rule)):
      outs = _eval_rewritten(body[0], body[1], ins, rule)
    elif any(isinstance(sub, ClosedJaxpr) and _contains(sub.jaxpr, rule)
             for sub in _sub_jaxprs(eqn)):
      outs = bind(_with_rewritten_bodies(eqn, rule), *ins)
    else:
      outs = bind(eqn, *ins)
    for v, o in zip(eqn.outvars, outs):
      env[v] = o
  return [read(v) for v in jaxpr.outvars]


def _with_rewritten_bodies(eqn: JaxprEqn, rule: Rule) -> JaxprEqn:
  params = {}
  for k, v in eqn.params.items():
    if isinstance(v, ClosedJaxpr):
      v = _rewritten_closed(v, rule)
    elif isinstance(v, tuple) and v and all(isinstance(x, ClosedJaxpr)
                                            for x in v):
      v = tuple(_rewritten_closed(x, rule) for x in v)
    params[k] = v
  return eqn.replace(params=params)


def eval_closed(closed: ClosedJaxpr, *args: Any) -> list[Any]:
  """Evaluates a closed jaxpr (binding its equations under any trace)."""
  return jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *args)


def is_tracer(v: Any) -> bool:
  """Whether ``v`` is an abstract value being traced (e.g. under jit)."""
  return isinstance(v, jax.core.Tracer)


@functools.cache
def _transposes_user_scans() -> bool:
  """Whether ``jax.linear_transpose`` transposes a ``lax.scan`` written in
  the function itself. jax >= 0.7 reads linearity from the arguments; jax
  0.6 reads the scan's ``linear`` flags, which only JAX's own linearisation
  sets (``lax.scan`` leaves them false, and transposing fails)."""
  def f(t):
    return jax.lax.scan(lambda c, x: (c + x, c), 0.0, t)[0]
  try:
    jax.linear_transpose(f, jax.ShapeDtypeStruct((2,), np.float32))(1.0)
  except (AssertionError, NotImplementedError, TypeError, ValueError):
    return False
  return True


def linear_transpose(fun, *avals):
  """``jax.linear_transpose(fun, *avals)`` for a ``fun`` that is linear in
  its inputs, also where it runs ``lax.scan`` on them (on jax 0.6 through
  the VJP at zero, which is the same map)."""
  transpose = jax.linear_transpose(fun, *avals)
  if _transposes_user_scans():
    return transpose

  def either(ct):
    try:
      return transpose(ct)
    except (AssertionError, NotImplementedError):
      zeros = [jax.numpy.zeros(a.shape, a.dtype) for a in avals]
      return jax.vjp(fun, *zeros)[1](ct)
  return either


def enable_x64(on: bool = True):
  """A context in which 64-bit mode is ``on`` (``jax.enable_x64`` from jax
  0.7; ``jax.experimental.enable_x64`` / ``disable_x64`` on jax 0.6)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(on)
  experimental = importlib.import_module("jax.experimental")
  return experimental.enable_x64() if on else experimental.disable_x64()


def shard_map(f, *, mesh, in_specs, out_specs):
  """``f`` mapped over ``mesh``, without replication checks (``jax.shard_map``
  from jax 0.7; ``jax.experimental.shard_map`` with ``check_rep`` on 0.6)."""
  if hasattr(jax, "shard_map"):
    return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                         check_vma=False)
  experimental = importlib.import_module("jax.experimental.shard_map")
  return experimental.shard_map(f, mesh=mesh, in_specs=in_specs,
                                out_specs=out_specs, check_rep=False)


def compilation_cache_dir() -> str | None:
  """The directory of JAX's persistent compilation cache, if set."""
  return jax.config.jax_compilation_cache_dir


def enable_compilation_cache(directory: str) -> None:
  """Points JAX's persistent compilation cache at ``directory``, caching
  every executable however fast it compiled (JAX's default skips those
  under a second, which NTK executables of small models are)."""
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
