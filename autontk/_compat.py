"""Every version-dependent touch of JAX internals, in one place.

``jax.extend`` promises no stability, so the rest of autontk imports only
``jax``, ``jax.numpy``, ``jax.lax`` and the names re-exported here. Checked on
jax 0.10.2: ``pjit`` is now ``jit``, ``remat`` is ``remat2``, custom VJP
functions appear as ``custom_lin`` after ``jax.linearize``, and the symbolic
zero-sum of tangents is ``add_any``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
# Dead-code elimination of jaxprs (to find loop counters and indices known at
# trace time) has no public home.
from jax._src.interpreters import partial_eval as _pe
from jax.extend import core as jex_core
from jax.extend.core import primitives as jex_primitives

ClosedJaxpr = jex_core.ClosedJaxpr
Jaxpr = jex_core.Jaxpr
JaxprEqn = jex_core.JaxprEqn
Literal = jex_core.Literal
Primitive = jex_core.Primitive
Var = jex_core.Var
DropVar = jex_core.DropVar

primitives = jex_primitives


def _optional(name: str) -> Primitive | None:
  return getattr(jex_primitives, name, None)


# Primitives whose body is evaluated in line: they only scope a sub-jaxpr.
# Keyed by object; missing ones (older or newer JAX) are skipped.
_INLINE_PARAM = {
    "jit_p": "jaxpr",
    "pjit_p": "jaxpr",
    "closed_call_p": "call_jaxpr",
    "call_p": "call_jaxpr",
    "core_call_p": "call_jaxpr",
    "remat_p": "jaxpr",
    "checkpoint_p": "jaxpr",
    "custom_jvp_call_p": "call_jaxpr",
    "custom_vjp_call_p": "call_jaxpr",
}
INLINE_PRIMITIVES: dict[Primitive, str] = {
    p: key for name, key in _INLINE_PARAM.items()
    if (p := _optional(name)) is not None
}

# Primitives that return their single input unchanged (placement hints): a
# parameter passes through them as itself.
PASS_THROUGH: frozenset[Primitive] = frozenset(
    p for name in ("sharding_constraint_p",)
    if (p := _optional(name)) is not None)

# ``add_any`` sums tangents; it behaves like ``add`` on values.
ADD_ANY = _optional("add_jaxvals_p")


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
  return isinstance(v, DropVar)


def bind(eqn: JaxprEqn, *args: Any) -> list[Any]:
  """Evaluates one equation on the given inputs; always a list of outputs."""
  # jax >= 0.7: get_bind_params returns the params dict (it used to return
  # ``(subfuns, params)``).
  params = eqn.primitive.get_bind_params(eqn.params)
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
  as_inputs = _pe.convert_constvars_jaxpr(jaxpr)
  n_consts, n = len(jaxpr.constvars), len(jaxpr.outvars)

  def known(outputs: list[int]) -> list[np.ndarray] | None:
    used = [i in outputs for i in range(n)]
    dced, used_inputs = _pe.dce_jaxpr(as_inputs, used)
    args = []
    for i, u in enumerate(used_inputs):
      if not u:
        continue
      if i >= n_consts or known_consts[i] is None:
        return None
      args.append(known_consts[i])
    with jax.ensure_compile_time_eval():
      return [np.asarray(v) for v in jax.core.eval_jaxpr(dced, [], *args)]

  together = known(ints)
  if together is not None:
    return dict(zip(ints, together))
  out = {}
  for i in ints:
    one = known([i])
    if one is not None:
      out[i] = one[0]
  return out


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


def is_tracer(v: Any) -> bool:
  """Whether ``v`` is an abstract value being traced (e.g. under jit)."""
  return isinstance(v, jax.core.Tracer)


def compilation_cache_dir() -> str | None:
  """The directory of JAX's persistent compilation cache, if set."""
  return jax.config.jax_compilation_cache_dir


def enable_compilation_cache(directory: str) -> None:
  """Points JAX's persistent compilation cache at ``directory``, caching
  every executable however fast it compiled (JAX's default skips those
  under a second, which NTK executables of small models are)."""
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
