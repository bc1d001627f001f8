"""The rule table: one record per primitive, keyed by the primitive object.

A record holds everything the method knows about one primitive:

* an optional *structure rule* (``UseContext -> Structure`` or ``None`` when
  the rule does not cover these parameters);
* an optional *Jacobian rule* (``UseContext -> cotangent map`` giving the
  materialised Jacobian of the use, cheaper than the generic transpose);
* an optional *view rule* (``UseContext -> ViewMap`` or ``None``): the
  primitive applied to θ only selects or rearranges θ's entries (a slice,
  an index, a transpose), so its output is a view of θ
  (:mod:`.regions`) rather than a use; the rule sees the other inputs as
  NumPy arrays when they are known at trace time (else ``None``);
* an optional *lowering* (``(params, *args) -> outputs`` or ``None``): an
  equivalent formulation the walk evaluates the equation with, where the
  backend's own kernel for it is slow (:func:`evaluate`);
* facts the interpreter uses while walking the linearised network
  (:class:`PrimitiveFacts`): whether tangents pass through it as a signed
  sum, whether it only adds or drops size-1 axes, whether a parameter
  passes through it as itself.

Rules and facts are registered right below their definitions in
:mod:`.rules`. Any primitive without an applicable rule takes
:func:`generic`: the exact Jacobian of the use through
``jax.linear_transpose`` of the primitive, logged once per primitive
(``strict=True`` raises instead).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp

from autontk import _compat
from autontk.methods.structured.regions import ViewMap
from autontk.methods.structured.structure import Structure, dense

log = logging.getLogger("autontk.structured")

StructureRule = Callable[["UseContext"], "Structure | None"]
JacobianRule = Callable[["UseContext"], "Callable[[Any], jax.Array] | None"]
ViewRule = Callable[["UseContext"], "ViewMap | None"]
Lowering = Callable[..., "list[jax.Array] | None"]


@dataclasses.dataclass(frozen=True)
class UseContext:
  """One use of a parameter leaf θ by one equation.

  Attributes:
    eqn: the equation (its ``primitive`` and ``params``).
    position: which input of the equation is θ.
    inputs: per input, its value if it is a constant (residual, literal),
      else ``None`` (θ itself or another tangent).
    in_avals: per input, its abstract value.
    out_avals: per output, its abstract value.
  """

  eqn: Any
  position: int
  inputs: tuple[Any, ...]
  in_avals: tuple[Any, ...]
  out_avals: tuple[Any, ...]

  @property
  def params(self) -> dict[str, Any]:
    return self.eqn.params

  @property
  def primitive(self):
    return self.eqn.primitive

  @property
  def theta_aval(self):
    return self.in_avals[self.position]

  @property
  def out_aval(self):
    return self.out_avals[0]

  def other(self) -> Any:
    """The constant operand of a binary primitive (``None`` if tangent)."""
    return self.inputs[1 - self.position]

  def apply(self, theta: jax.Array):
    """The equation as a function of θ alone (other tangents are zero)."""
    args = []
    for i, (v, aval) in enumerate(zip(self.inputs, self.in_avals)):
      if i == self.position:
        args.append(theta)
      elif v is None:
        args.append(jnp.zeros(aval.shape, aval.dtype))
      else:
        args.append(v)
    outs = evaluate(self.eqn, *args)
    return outs if self.primitive.multiple_results else outs[0]


@dataclasses.dataclass(frozen=True)
class PrimitiveFacts:
  """What the interpreter may assume about a primitive's tangents.

  Attributes:
    additive: per input, the sign with which it enters the output when the
      output is a signed sum of its inputs (``add``: ``(1, 1)``, ``sub``:
      ``(1, -1)``, ``neg``: ``(-1,)``, casts and copies: ``(1,)``);
      ``None`` otherwise. Used to tell when a network output *is* a use's
      output (its cotangent is then the identity and is never stored).
    unit_axes: the primitive only adds or drops size-1 axes when its first
      input and its output have the same non-unit shape (``squeeze``,
      ``reshape``, ``broadcast_in_dim``): entries pass through unchanged.
    passes_param: ``y = prim(θ)`` is θ itself (placed or cast), so the uses
      of ``y`` are uses of θ and keep their structure.
  """

  additive: tuple[float, ...] | None = None
  unit_axes: bool = False
  passes_param: bool = False


@dataclasses.dataclass
class RuleRecord:
  """Everything known about one primitive (see the module docstring)."""

  primitive: Any
  structure: StructureRule | None = None
  jacobian: JacobianRule | None = None
  view: ViewRule | None = None
  lowering: Lowering | None = None
  facts: PrimitiveFacts = PrimitiveFacts()

  @property
  def has_rule(self) -> bool:
    return (self.structure is not None or self.jacobian is not None or
            self.view is not None)


RULES: dict[Any, RuleRecord] = {}
_NO_FACTS = PrimitiveFacts()


def _record(primitive) -> RuleRecord:
  if primitive is None:  # not in this JAX version
    return RuleRecord(None)
  return RULES.setdefault(primitive, RuleRecord(primitive))


def _registrar(field: str, doc: str) -> Callable:
  """A decorator factory ``name(*primitives)`` that stores the decorated
  rule in the ``field`` of each primitive's record."""
  def register(*primitives):
    def wrap(rule):
      for p in primitives:
        setattr(_record(p), field, rule)
      return rule
    return wrap
  register.__doc__ = doc
  return register


structure_rule = _registrar(
    "structure", "Registers a structure rule for one or more primitives.")
jacobian_rule = _registrar(
    "jacobian", "Registers a Jacobian rule (explicit cotangent map) for "
    "primitives.")
view_rule = _registrar(
    "view", "Registers a view rule (θ's entries selected or rearranged).")
lowering_rule = _registrar(
    "lowering", "Registers an equivalent formulation the walk evaluates a "
    "primitive with (``(params, *args) -> outputs or None``).")


def evaluate(eqn, *args) -> list[Any]:
  """Evaluates one equation on ``args``, by its primitive's lowering where
  one is registered and applies, else by binding the primitive."""
  record = RULES.get(eqn.primitive)
  if record is not None and record.lowering is not None:
    outs = record.lowering(eqn.params, *args)
    if outs is not None:
      return outs
  return _compat.bind(eqn, *args)


def view_of(ctx: UseContext) -> ViewMap | None:
  """The view ``ctx``'s equation makes of θ, if its primitive has one."""
  record = RULES.get(ctx.primitive)
  if record is None or record.view is None:
    return None
  return record.view(ctx)


def register_facts(*primitives, additive: tuple[float, ...] | None = None,
                   unit_axes: bool = False,
                   passes_param: bool = False) -> None:
  """Records :class:`PrimitiveFacts` for primitives (``None`` ones skipped)."""
  facts = PrimitiveFacts(additive, unit_axes, passes_param)
  for p in primitives:
    _record(p).facts = facts


def facts(primitive) -> PrimitiveFacts:
  """The facts registered for ``primitive`` (none known: all off)."""
  record = RULES.get(primitive)
  return _NO_FACTS if record is None else record.facts


class MissingRuleError(NotImplementedError):
  """Raised under ``strict=True`` when a use needs the generic fallback."""


_LOGGED: set[Any] = set()

# What jax raises when asked to transpose what it cannot (e.g. while loops).
_NOT_TRANSPOSABLE = (NotImplementedError, TypeError, ValueError)


def generic(ctx: UseContext) -> Structure:
  """Exact fallback: the use's Jacobian through the primitive's transpose.

  Primitives JAX cannot transpose (``while`` with a parameter in its body)
  get their forward-mode Jacobian ``∂y/∂θ`` instead, contracted with ``C``.
  """
  aval = ctx.theta_aval
  multi = ctx.primitive.multiple_results
  floats = [jnp.issubdtype(a.dtype, jnp.inexact) for a in ctx.out_avals]

  def apply(theta):  # the float outputs only: the others have no tangents
    outs = ctx.apply(theta)
    return [o for o, f in zip(outs, floats) if f] if multi else outs

  def by_transpose(c):
    transpose = jax.linear_transpose(apply, aval)
    return transpose(list(c) if multi else c)[0]

  def by_forward(c):
    jac = jax.jacfwd(apply)(jnp.zeros(aval.shape, aval.dtype))
    cs, js = (list(c), jac) if multi else ([c], [jac])
    return sum(jnp.tensordot(ci, ji, axes=ci.ndim) for ci, ji in zip(cs, js))

  def cot_map(c):
    try:
      return by_transpose(c)
    except _NOT_TRANSPOSABLE:
      return by_forward(c)

  return dense(len(aval.shape), cot_map)


def resolve(ctx: UseContext, structure_rules: bool = True,
            jacobian_rules: bool = True, strict: bool = False) -> Structure:
  """The structure of one use: rule if one applies, else :func:`generic`."""
  record = RULES.get(ctx.primitive)
  if record is not None:
    if structure_rules and record.structure is not None:
      s = record.structure(ctx)
      if s is not None:
        return s
    if jacobian_rules and record.jacobian is not None:
      cot_map = record.jacobian(ctx)
      if cot_map is not None:
        return dense(len(ctx.theta_aval.shape), cot_map)
  if structure_rules or jacobian_rules:
    what = ("has no rule" if record is None or not record.has_rule else
            "has no rule for these parameters")
    if strict:
      raise MissingRuleError(
          f"structured_derivatives: primitive `{ctx.primitive}` {what} "
          f"(parameter as input {ctx.position}); strict=True forbids the "
          "generic fallback.")
    if ctx.primitive not in _LOGGED:
      _LOGGED.add(ctx.primitive)
      log.info("structured_derivatives: primitive `%s` %s; using the exact "
               "generic fallback (its Jacobian through linear_transpose).",
               ctx.primitive, what)
  return generic(ctx)


def registered() -> dict[Any, RuleRecord]:
  """Records with a structure or Jacobian rule (importing this package
  loads every rule module; records holding only facts are in
  :data:`RULES`)."""
  return {p: r for p, r in RULES.items() if r.has_rule}
