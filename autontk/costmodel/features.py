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

A field's role is declared once, in its metadata: ``work`` fields add up
over programs and scale with repetitions, ``vector`` fields enter the
calibration's input (``"log"``: as ``log1p``). Adding a feature is adding a
field here; the encodings follow (and a test checks every field has a role).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

_WORK = {"work": True, "vector": "log"}
_COUNT = {"vector": "log"}


def _field(default: Any, meta: Mapping[str, Any], doc: str = "") -> Any:
  return dataclasses.field(default=default, metadata={**meta, "doc": doc})


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

  method: str = _field("", {})
  flops: float | None = _field(None, _WORK)
  bytes_accessed: float | None = _field(None, _WORK)
  transcendentals: float | None = _field(None, _WORK)
  grouped_conv_flops: float = _field(0.0, _WORK)
  depthwise_conv_flops: float = _field(0.0, _WORK)
  contraction_flops: float = _field(0.0, {"work": True})
  resident_bytes: float = _field(0.0, _WORK)
  kernels: float = _field(0.0, _WORK)
  inner_loop_iterations: float = _field(0.0, _WORK)
  peak_memory: float | None = _field(None, {"vector": "log", "memory": True})
  peak_memory_exact: bool = _field(False, {"memory": True})
  calls: int = _field(1, _COUNT)
  loop_iterations: int = _field(0, _COUNT)
  blocks: int = _field(1, _COUNT)

  # Combining ---------------------------------------------------------------

  def scaled(self, factor: float) -> "CostFeatures":
    """The work run ``factor`` times (memory unchanged)."""
    return dataclasses.replace(self, **{
        name: _mul(getattr(self, name), factor) for name in WORK_FIELDS})

  def plus(self, other: "CostFeatures") -> "CostFeatures":
    """Two programs run one after the other: work adds, memory is the max."""
    work = {name: _add(getattr(self, name), getattr(other, name))
            for name in WORK_FIELDS}
    peaks = [p for p in (self.peak_memory, other.peak_memory) if p is not None]
    return dataclasses.replace(
        self, **work, peak_memory=max(peaks) if peaks else None,
        peak_memory_exact=self.peak_memory_exact and other.peak_memory_exact)

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
    """Inverse of :meth:`to_row`; also reads rows of earlier releases
    (``bytes``, ``peak_bytes``, ``n_chunks``) and ignores unknown keys."""
    row = dict(row or {})
    for old, new in _LEGACY_KEYS.items():
      if old in row and new not in row:
        row[new] = row.pop(old)
    values = {}
    for f in dataclasses.fields(CostFeatures):
      if f.name in row and row[f.name] is not None:
        values[f.name] = _coerce(f, row[f.name])
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
                    if f.metadata.get("work"))
"""Fields that add up over programs and scale with repetitions."""

VECTOR_FIELDS = tuple(f.name for f in dataclasses.fields(CostFeatures)
                      if f.metadata.get("vector"))
"""Fields the learned calibration sees, in order."""

_LEGACY_KEYS = {"bytes": "bytes_accessed", "peak_bytes": "peak_memory",
                "n_chunks": "blocks"}


def _mul(v: Any, factor: float) -> Any:
  return None if v is None else v * factor


def _add(a: Any, b: Any) -> Any:
  if a is None and b is None:
    return None
  return (a or 0) + (b or 0)


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
