"""An execution plan, and its one JSON codec.

A :class:`Plan` says how one call signature is computed: which exact method,
with which options, and how the batch is chunked. The planner
(``implementation="auto"``) chooses plans; explicit implementations get the
trivial plan for their method. A plan is a frozen, hashable value: it keys
compiled executables, the persistent plan cache and the tuner's studies.

Every stored or printed form of a plan goes through :func:`plan_to_dict` /
:func:`plan_from_dict` (and their JSON strings): the cost report, the plan
cache, the tuner's study keys and the tiled driver's run directory. Only
autontk's own types can be named in it: a stored plan never names code to
import or run.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax

from autontk import methods
from autontk._options import Implementation
from autontk._problem import NtkProblem
from autontk.chunking import BatchChunking


@dataclasses.dataclass(frozen=True)
class Plan:
  """How one NTK call signature is computed.

  Attributes:
    implementation: the exact method (never ``AUTO``).
    config: the method's options dataclass, or ``None`` for its defaults.
    chunking: how the batch is split into blocks, or ``None`` for one shot.

  >>> import autontk
  >>> plan = autontk.Plan(autontk.Implementation.JACOBIAN_CONTRACTION,
  ...                     chunking=autontk.BatchChunking(16, "scan"))
  >>> autontk.Plan.from_dict(plan.to_dict()) == plan
  True
  """

  implementation: Implementation
  config: Any = None
  chunking: BatchChunking | None = None

  def __post_init__(self):
    if self.implementation is Implementation.AUTO:
      raise ValueError("A plan needs an explicit implementation, not AUTO.")

  def describe(self) -> str:
    parts = [self.implementation.name.lower()]
    if self.config is not None:
      parts.append(repr(self.config))
    if self.chunking is not None:
      parts.append(repr(self.chunking))
    return " ".join(parts)

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready form (see :func:`plan_to_dict`)."""
    return plan_to_dict(self)

  @staticmethod
  def from_dict(d: dict[str, Any]) -> "Plan":
    """Inverse of :meth:`to_dict`."""
    return plan_from_dict(d)

  def execute(self, problem: NtkProblem) -> list[jax.Array]:
    """Kernels of ``problem`` (one per output leaf) under this plan."""
    if self.chunking is not None:
      return self.chunking.execute(self, problem)
    return methods.compute(self.implementation, problem, self.config)


# The codec ---------------------------------------------------------------------


def _known_types() -> dict[str, type]:
  types = {t.__name__: t for t in (methods.get(i).config_type
                                   for i in methods.registered()) if t}
  types[BatchChunking.__name__] = BatchChunking
  return types


def plan_to_dict(plan: Plan) -> dict[str, Any]:
  """``{"implementation": name, "config": value, "chunking": value}`` where a
  value is ``None`` or ``{"type": TypeName, "fields": {...}}``."""
  return {"implementation": plan.implementation.name.lower(),
          "config": _encode(plan.config), "chunking": _encode(plan.chunking)}


def plan_from_dict(d: dict[str, Any]) -> Plan:
  """Inverse of :func:`plan_to_dict`.

  Raises:
    ValueError: the dict names a type that is not a plan part of autontk.
  """
  try:
    impl = Implementation.parse(d["implementation"])
  except (KeyError, TypeError) as e:
    raise ValueError(f"Not a plan: {d!r}.") from e
  return Plan(impl, _decode(d.get("config")), _decode(d.get("chunking")))


def plan_to_json(plan: Plan) -> str:
  """A plan as a JSON string (stable: equal plans give equal strings)."""
  return json.dumps(plan_to_dict(plan), sort_keys=True)


def plan_from_json(text: str) -> Plan:
  """Inverse of :func:`plan_to_json`."""
  return plan_from_dict(json.loads(text))


def _encode(value: Any) -> Any:
  if value is None:
    return None
  name = type(value).__name__
  if _known_types().get(name) is not type(value):
    raise TypeError(f"A plan part must be a method config or a chunking of "
                    f"autontk; got a {name}.")
  fields = {f.name: _encode_field(getattr(value, f.name))
            for f in dataclasses.fields(value) if f.init}
  return {"type": name, "fields": fields}


def _encode_field(v: Any) -> Any:
  if v is None or isinstance(v, (bool, int, float, str)):
    return v
  if isinstance(v, (tuple, list)):
    return {"tuple": [_encode_field(x) for x in v]}
  raise TypeError(f"Plan options must be numbers, strings, None or tuples; "
                  f"got a {type(v).__name__}.")


def _decode(value: Any) -> Any:
  if value is None:
    return None
  if not isinstance(value, dict):
    raise ValueError(f"Not a plan part: {value!r}.")
  name = str(value.get("type", ""))
  cls = _known_types().get(name)
  if cls is None:
    raise ValueError(f"A stored plan names {value.get('type')!r}, which is "
                     "not a method config or chunking of autontk.")
  fields = value.get("fields") or {}
  return cls(**{k: _decode_field(v) for k, v in fields.items()})


def _decode_field(v: Any) -> Any:
  if isinstance(v, dict) and set(v) == {"tuple"}:
    return tuple(_decode_field(x) for x in v["tuple"])
  return v
