"""``CostFeatures``: what the cost model knows about the work of a program.

One record, used everywhere a cost is read, combined, predicted, stored or
learned from:

* the HLO readers (:mod:`~autontk.costmodel.hlo`) fill it from XLA's cost
  and memory analyses of one program;
* the estimator (:mod:`~autontk.costmodel.estimate`) combines the programs of
  a candidate plan (:meth:`CostFeatures.scaled`, :meth:`CostFeatures.plus`)
  and adds what the plan runs around them (calls, loop iterations, blocks);
* time predictors (:mod:`~autontk.costmodel.predict`) map it to seconds;
* the plan cache stores it per candidate (:meth:`CostFeatures.to_row`, read
  back with :meth:`CostFeatures.from_row`);
* the learned calibration (:mod:`~autontk.costmodel.calibration`) trains on
  :meth:`CostFeatures.vector`.

A field's roles are declared once, in its metadata (:func:`_field`): how
it combines over programs (``combine``), which analysis of a compiled
program it is read from (``merge``) and whether it enters the calibration's
input (``vector``). Adding a feature is adding a field here; combining,
merging and the encodings follow (and a test checks every field survives
each of them).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

COMBINE = ("sum", "max", "all", "first")
"""How :meth:`CostFeatures.plus` combines a field of two programs run one
after the other: ``"sum"`` (work: adds up, and :meth:`CostFeatures.scaled`
multiplies it), ``"max"`` (memory), ``"all"`` (a flag true of both), or
``"first"`` (a count of the plan's own, set by the estimator: kept)."""

MERGE = ("lowered", "compiled", "compiled_text")
"""Where :func:`~autontk.costmodel.hlo.merge_compiled` takes a field from:
the lowered program (``"lowered"``), XLA's analysis of the compiled one
where it has a value (``"compiled"``), or the compiled program's text where
it was read (``"compiled_text"``)."""


def _field(default: Any, combine: str, merge: str,
           vector: bool = False) -> Any:
  assert combine in COMBINE and merge in MERGE
  return dataclasses.field(default=default, metadata={
      "combine": combine, "merge": merge, "vector": vector})


@dataclasses.dataclass(frozen=True)
class CostFeatures:
  """Work and memory of one program, or of a whole candidate plan.

  ``None`` means unknown (a backend without that analysis); numbers are
  never negative.

  Attributes:
    method: the method's name (``"jacobian_contraction"``...), ``""`` for a
      bare program.
    flops: floating-point operations, loop trip counts and blocks applied.
    bytes_accessed: bytes read and written by all (fused) ops.
    transcendentals: exp/log/tanh/... evaluations.
    grouped_conv_flops: the part of ``flops`` in grouped convolutions with
      large windows (per-example weight gradients under ``vmap``), which XLA
      runs far below dense speed on CPUs.
    depthwise_conv_flops: the part of ``flops`` in grouped convolutions with
      small windows (depthwise layers, patch extraction).
    contraction_flops: FLOPs of every ``dot_general`` and convolution counted
      from the StableHLO text: a floor for ``flops`` where a backend hides
      contractions in custom calls (GPU matmuls report -1).
    peak_memory: bytes live at once (arguments + outputs + temporaries).
    peak_memory_exact: ``peak_memory`` comes from XLA's buffer assignment
      (compiled), not from the lowered-program estimate.
    resident_bytes: the part of ``bytes_accessed`` moved by kernels small
      enough to work from the cache (at most
      :data:`~autontk.costmodel.ops.RESIDENT_BYTES` each).
    strided_bytes: the part of ``bytes_accessed`` moved by transposes that
      change the minor dimension (strided reads or writes,
      :func:`~autontk.costmodel.ops.moves_minor`) in kernels moving more
      than :data:`~autontk.costmodel.ops.STRIDED_BYTES`; not part of
      ``resident_bytes``.
    kernels: kernels the programs launch per evaluation, each loop body
      counted as often as it runs (a fusion, a custom call, a copy: see
      :mod:`~autontk.costmodel.ops`); estimated before fusion for a lowered
      program, counted for a compiled one.
    inner_loop_iterations: sequential iterations of the loops inside the
      programs (a ``lax.scan`` of 20 steps: 20; nested loops multiply),
      read from their text (:mod:`~autontk.costmodel.loop_counts`).
    calls: compiled calls the host dispatches per evaluation (the blocks of
      a host loop, plus the assembly).
    loop_iterations: iterations of compiled loops the plan adds around its
      programs (blocks of a scanned chunking, column chunks); not part of
      ``inner_loop_iterations``.
    blocks: batch blocks evaluated (1 when unchunked).

  ``flops``, ``bytes_accessed`` and ``transcendentals`` include every
  iteration of the programs' own loops (XLA's analysis counts a loop body
  once; the readers add the rest).
  """

  method: str = _field("", "first", "lowered")
  flops: float | None = _field(None, "sum", "compiled", vector=True)
  bytes_accessed: float | None = _field(None, "sum", "compiled", vector=True)
  transcendentals: float | None = _field(None, "sum", "compiled",
                                         vector=True)
  grouped_conv_flops: float = _field(0.0, "sum", "lowered", vector=True)
  depthwise_conv_flops: float = _field(0.0, "sum", "lowered", vector=True)
  contraction_flops: float = _field(0.0, "sum", "lowered")
  resident_bytes: float = _field(0.0, "sum", "compiled_text", vector=True)
  strided_bytes: float = _field(0.0, "sum", "compiled_text", vector=True)
  kernels: float = _field(0.0, "sum", "compiled_text", vector=True)
  inner_loop_iterations: float = _field(0.0, "sum", "compiled_text",
                                        vector=True)
  peak_memory: float | None = _field(None, "max", "compiled", vector=True)
  peak_memory_exact: bool = _field(False, "all", "compiled")
  calls: int = _field(1, "first", "lowered", vector=True)
  loop_iterations: int = _field(0, "first", "lowered", vector=True)
  blocks: int = _field(1, "first", "lowered", vector=True)

  # Combining ---------------------------------------------------------------

  def scaled(self, factor: float) -> "CostFeatures":
    """The work run ``factor`` times (memory and counts unchanged)."""
    return dataclasses.replace(self, **{
        name: _mul(getattr(self, name), factor) for name in WORK_FIELDS})

  def plus(self, other: "CostFeatures") -> "CostFeatures":
    """Two programs run one after the other: work adds, memory is the max
    (each field as its ``combine`` says)."""
    return CostFeatures(**{
        f.name: _COMBINERS[f.metadata["combine"]](getattr(self, f.name),
                                                  getattr(other, f.name))
        for f in dataclasses.fields(CostFeatures)})

  def with_work_of(self, other: "CostFeatures") -> "CostFeatures":
    """This program's memory and counts with ``other``'s work."""
    return dataclasses.replace(self, **{name: getattr(other, name)
                                        for name in WORK_FIELDS})

  # Encodings ----------------------------------------------------------------

  def to_row(self) -> dict[str, Any]:
    """JSON-ready dict (the plan cache's ``features`` column)."""
    return dataclasses.asdict(self)

  @staticmethod
  def from_row(row: Mapping[str, Any] | None,
               method: str = "") -> "CostFeatures":
    """Inverse of :meth:`to_row` (unknown keys are ignored)."""
    row = dict(row or {})
    values = {f.name: _coerce(f, row[f.name])
              for f in dataclasses.fields(CostFeatures)
              if row.get(f.name) is not None}
    values.setdefault("method", method)
    return CostFeatures(**values)

  def vector(self) -> list[float]:
    """The calibration's numeric input: one entry per ``vector`` field."""
    out = []
    for name in VECTOR_FIELDS:
      v = getattr(self, name)
      out.append(math.log1p(_nonneg(v)))
    return out


WORK_FIELDS = tuple(f.name for f in dataclasses.fields(CostFeatures)
                    if f.metadata["combine"] == "sum")
"""Fields that add up over programs and scale with repetitions."""

VECTOR_FIELDS = tuple(f.name for f in dataclasses.fields(CostFeatures)
                      if f.metadata["vector"])
"""Fields the learned calibration sees, in order."""


def _mul(v: Any, factor: float) -> Any:
  return None if v is None else v * factor


def _add(a: Any, b: Any) -> Any:
  if a is None and b is None:
    return None
  return (a or 0) + (b or 0)


def _max(a: Any, b: Any) -> Any:
  known = [v for v in (a, b) if v is not None]
  return max(known) if known else None


_COMBINERS = {"sum": _add, "max": _max, "all": lambda a, b: a and b,
              "first": lambda a, b: a}


def _nonneg(v: Any) -> float:
  try:
    v = float(v)
  except (TypeError, ValueError):
    return 0.0
  return v if v > 0 and math.isfinite(v) else 0.0


def _coerce(f: dataclasses.Field, v: Any) -> Any:
  if f.name == "method":
    return str(v)
  if f.name == "peak_memory_exact":
    return bool(v)
  if f.default is None or isinstance(f.default, float):
    v = float(v)
    return v if v >= 0 and math.isfinite(v) else f.default
  return int(v)
