"""Reading XLA's cost and memory analyses into :class:`CostFeatures`.

``cost_analysis()`` returns a dict on current JAX, a list of dicts (one per
computation) on older versions, ``None`` where a backend has no analysis
(CUDA's lowered HLO), and ``-1`` for what it cannot count (GPU custom-call
matmuls). Every number here is ``None`` when unknown, never negative.

XLA counts a loop body once (``while``, and so ``scan``/``lax.map``): a
computation looping ``k`` times reports about ``1/k`` of its work. Callers
that build loops (chunked plans, column-chunked NTK-vector products) scale
by the trip count they know, see :meth:`CostFeatures.scaled`.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any, Mapping

import jax

from autontk.costmodel.features import CostFeatures

_FLOPS = "flops"
_BYTES = "bytes accessed"
_TRANSCENDENTALS = "transcendentals"


def _known(v: Any) -> float | None:
  try:
    v = float(v)
  except (TypeError, ValueError):
    return None
  return v if v >= 0 and math.isfinite(v) else None


def read_cost_analysis(analysis: Any) -> dict[str, float | None]:
  """``{"flops", "bytes accessed", "transcendentals"}`` from any form.

  Args:
    analysis: what ``Lowered/Compiled.cost_analysis()`` returned: a dict, a
      list of dicts (summed), ``None``, or a dict with ``-1`` entries.

  Returns:
    The three counts, each ``None`` when missing or negative.

  >>> read_cost_analysis([{"flops": 2.0}, {"flops": 3.0, "bytes accessed": -1}])
  {'flops': 5.0, 'bytes accessed': None, 'transcendentals': None}
  """
  if isinstance(analysis, Mapping):
    parts = [analysis]
  elif isinstance(analysis, (list, tuple)):
    parts = [a for a in analysis if isinstance(a, Mapping)]
  else:
    parts = []
  out: dict[str, float | None] = {}
  for key in (_FLOPS, _BYTES, _TRANSCENDENTALS):
    vals = [_known(p.get(key)) for p in parts if key in p]
    known = [v for v in vals if v is not None]
    out[key] = sum(known) if known else None
  return out


def read_memory_analysis(analysis: Any) -> float | None:
  """Peak bytes from ``Compiled.memory_analysis()`` (``None`` if unknown).

  The larger of ``peak_memory_in_bytes`` and arguments + outputs +
  temporaries - aliased bytes: on CPU ``peak_memory_in_bytes`` counts only
  arguments and outputs, while the temporaries (XLA's packed temp buffer)
  can be far larger.
  """
  if analysis is None:
    return None
  if isinstance(analysis, (list, tuple)):
    vals = [read_memory_analysis(a) for a in analysis]
    known = [v for v in vals if v is not None]
    return max(known) if known else None
  peak = _known(getattr(analysis, "peak_memory_in_bytes", None))
  parts = [_known(getattr(analysis, name, None)) for name in
           ("argument_size_in_bytes", "output_size_in_bytes",
            "temp_size_in_bytes")]
  if all(p is None for p in parts):
    return peak
  alias = _known(getattr(analysis, "alias_size_in_bytes", None)) or 0.0
  total = max(sum(p or 0.0 for p in parts) - alias, 0.0)
  return max(total, peak or 0.0)


_TENSOR = re.compile(r"tensor<([0-9x]*)x?(f64|f32|f16|bf16|i64|i32|i16|i8|i1|"
                     r"ui32|ui8|complex<f32>|complex<f64>)>")
_ITEMSIZE = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2, "i64": 8, "i32": 4,
             "i16": 2, "i8": 1, "i1": 1, "ui32": 4, "ui8": 1,
             "complex<f32>": 8, "complex<f64>": 16}


def largest_tensor_bytes(stablehlo_text: str) -> int:
  """Bytes of the largest tensor type named in a StableHLO module."""
  best = 0
  for dims, dtype in _TENSOR.findall(stablehlo_text):
    size = math.prod(int(d) for d in dims.split("x") if d) if dims else 1
    best = max(best, size * _ITEMSIZE[dtype])
  return best


_CONV = re.compile(
    r"stablehlo\.convolution.*?dim_numbers = \[([^\]]*)\]x\[([^\]]*)\]->"
    r"\[([^\]]*)\].*?batch_group_count = (\d+).*?feature_group_count = "
    r"(\d+).*?:\s*\(tensor<([0-9x]+)x\w+>, tensor<([0-9x]+)x\w+>\)\s*->"
    r"\s*tensor<([0-9x]+)x\w+>")


def _dims(s: str) -> list[int]:
  return [int(d) for d in s.split("x") if d]


_LARGE_WINDOW = 25
"""Grouped convolutions with larger windows are weight-gradient-like."""


def conv_flops(stablehlo_text: str) -> tuple[float, float]:
  """``(grouped, depthwise)`` convolution FLOPs named in a StableHLO module.

  Only convolutions with a feature or batch group count above 1 count.
  "grouped" are those with a window larger than 5×5: the shape per-example
  weight gradients take under ``vmap`` (the activations' spatial extent is
  the window). "depthwise" are the small-window ones (depthwise layers,
  patch extraction). See :func:`contraction_flops` for the count.
  """
  grouped = depthwise = 0.0
  for flops, window, groups in _convolutions(stablehlo_text):
    if groups == 1:
      continue
    if window > _LARGE_WINDOW:
      grouped += flops
    else:
      depthwise += flops
  return grouped, depthwise


def _ops(text: str, op: str, pattern: re.Pattern):
  """``pattern``'s match on each line of ``text`` holding ``op``."""
  for line in text.splitlines():
    if op in line:
      m = pattern.search(line)
      if m is not None:
        yield m


def _convolutions(text: str):
  """``(flops, window size, group count)`` of each convolution."""
  for m in _ops(text, "stablehlo.convolution", _CONV):
    _, rhs_spec, _, bgc, fgc, _, rhs, out = m.groups()
    spec = [t.strip() for t in rhs_spec.split(",")]
    kernel = _dims(rhs)
    if len(spec) != len(kernel):
      continue
    window = math.prod(k for t, k in zip(spec, kernel) if t not in "io")
    k_in = kernel[spec.index("i")] if "i" in spec else 1
    yield (2.0 * math.prod(_dims(out)) * window * k_in, window,
           int(bgc) * int(fgc))


_TYPE = r"tensor<(?:([0-9]+(?:x[0-9]+)*)x)?[a-z]\w*>"
_DOT = re.compile(
    r"stablehlo\.dot_general.*?contracting_dims = \[([^\]]*)\] x "
    r"\[[^\]]*\].*?:\s*\(" + _TYPE + r", " + _TYPE + r"\)\s*->\s*" + _TYPE)


def contraction_flops(stablehlo_text: str) -> float:
  """FLOPs of every ``dot_general`` and convolution in a StableHLO module.

  A dot costs 2 × (output size) × (contracted size); a convolution
  2 × (output size) × (window size) × (kernel input features), padded
  window positions included (slightly above XLA's count at the borders).

  >>> contraction_flops("stablehlo.dot_general %a, %b, contracting_dims = "
  ...     "[1] x [0] : (tensor<8x16xf32>, tensor<16x4xf32>) -> "
  ...     "tensor<8x4xf32>")
  1024.0
  """
  total = sum(f for f, _, _ in _convolutions(stablehlo_text))
  for m in _ops(stablehlo_text, "stablehlo.dot_general", _DOT):
    contracting, lhs, _, out = m.groups()
    lhs_dims = _dims(lhs or "")
    axes = [int(a) for a in contracting.split(",") if a.strip()]
    if any(a >= len(lhs_dims) for a in axes):
      continue
    total += 2.0 * math.prod(_dims(out or "")) * math.prod(lhs_dims[a]
                                                     for a in axes)
  return total


def _io_bytes(lowered: Any) -> float:
  total = 0.0
  for tree in (lowered.in_avals, lowered.out_info):
    for leaf in jax.tree.leaves(tree):
      shape = getattr(leaf, "shape", ())
      dtype = getattr(leaf, "dtype", None)
      if dtype is not None:
        total += math.prod(shape) * dtype.itemsize
  return total


def analyse_lowered(lowered: Any) -> CostFeatures:
  """Cost of a ``jax.stages.Lowered`` without compiling it.

  The peak memory is a rough estimate (arguments and outputs plus the
  largest tensor the program names; XLA may fuse that tensor away or hold
  several), marked ``peak_memory_exact=False``: compile to confirm it.
  """
  counts = read_cost_analysis(_safe(lowered.cost_analysis))
  grouped = depthwise = contractions = 0.0
  try:
    text = lowered.as_text()
    peak = _io_bytes(lowered) + largest_tensor_bytes(text)
    grouped, depthwise = conv_flops(text)
    contractions = contraction_flops(text)
  except Exception:  # noqa: BLE001 - an estimate only; unknown is fine
    peak = None
  return CostFeatures(
      flops=counts[_FLOPS], bytes_accessed=counts[_BYTES],
      transcendentals=counts[_TRANSCENDENTALS], grouped_conv_flops=grouped,
      depthwise_conv_flops=depthwise, contraction_flops=contractions,
      peak_memory=peak, peak_memory_exact=False)


def analyse_compiled(compiled: Any) -> CostFeatures:
  """Cost and exact peak memory of a ``jax.stages.Compiled``."""
  counts = read_cost_analysis(_safe(compiled.cost_analysis))
  peak = read_memory_analysis(_safe(compiled.memory_analysis))
  return CostFeatures(
      flops=counts[_FLOPS], bytes_accessed=counts[_BYTES],
      transcendentals=counts[_TRANSCENDENTALS], peak_memory=peak,
      peak_memory_exact=peak is not None)


def merge_compiled(lowered: CostFeatures,
                   compiled: CostFeatures) -> CostFeatures:
  """The compiled program's numbers where known (fused bytes, exact memory).

  Off CPU, FLOPs never fall below the contractions counted in the lowered
  text: GPU backends report custom-call matmuls as -1 (unknown). On CPU the
  compiled count is exact, and may be lower after XLA's simplifications.
  The convolution split comes from the lowered text (the compiled analysis
  has none).
  """
  def pick(c, l):
    return c if c is not None else l
  flops = pick(compiled.flops, lowered.flops)
  if lowered.contraction_flops and (compiled.flops is None or
                                    jax.default_backend() != "cpu"):
    flops = max(flops or 0.0, lowered.contraction_flops)
  return CostFeatures(
      method=lowered.method, flops=flops,
      bytes_accessed=pick(compiled.bytes_accessed, lowered.bytes_accessed),
      transcendentals=pick(compiled.transcendentals,
                           lowered.transcendentals),
      grouped_conv_flops=lowered.grouped_conv_flops,
      depthwise_conv_flops=lowered.depthwise_conv_flops,
      contraction_flops=lowered.contraction_flops,
      peak_memory=pick(compiled.peak_memory, lowered.peak_memory),
      peak_memory_exact=compiled.peak_memory is not None,
      calls=lowered.calls, loop_iterations=lowered.loop_iterations,
      blocks=lowered.blocks)


def lower_and_analyse(jitted: Any, *args: Any
                      ) -> tuple[Any, CostFeatures, float]:
  """``(lowered, features, seconds)`` of ``jitted(*args)``: tracing and
  lowering, no compile."""
  t = time.perf_counter()
  lowered = jitted.lower(*args)
  return lowered, analyse_lowered(lowered), time.perf_counter() - t


def compile_and_analyse(lowered: Any) -> tuple[Any, CostFeatures, float]:
  """``(compiled, features, seconds)``; the compile lands in JAX's caches
  for reuse."""
  t = time.perf_counter()
  compiled = lowered.compile()
  return compiled, analyse_compiled(compiled), time.perf_counter() - t


def _safe(method) -> Any:
  try:
    return method()
  except Exception:  # noqa: BLE001 - some backends raise instead of None
    return None
