"""Reading XLA's cost and memory analyses into :class:`CostFeatures`.

``cost_analysis()`` returns a dict on current JAX, a list of dicts (one per
computation) on older versions, ``None`` where a backend has no analysis
(CUDA's lowered HLO), and ``-1`` for what it cannot count (GPU custom-call
matmuls). Every number here is ``None`` when unknown, never negative.

XLA counts a loop body once (``while``, and so ``scan``/``lax.map``): a
computation looping ``k`` times reports about ``1/k`` of its work. The
readers here add what the analysis leaves out, from the program's text
(:mod:`~autontk.costmodel.loop_counts` finds the loops and their trip counts,
:mod:`~autontk.costmodel.ops` prices one operation): the work of every
iteration after the first, the kernels the program launches and the
sequential iterations it steps through (:class:`LoopTerms`). Loops the
*plan* builds around its programs (chunked plans, column-chunked NTK-vector
products) are the estimator's to count, see :meth:`CostFeatures.scaled`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any, Mapping

import jax

from autontk.costmodel import loop_counts, ops
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


@dataclasses.dataclass(frozen=True)
class LoopTerms:
  """What a program's loops add to XLA's once-per-body counts.

  Attributes:
    kernels: kernels launched per run, loop bodies times their trip counts
      (see :mod:`~autontk.costmodel.ops` for what a kernel is).
    iterations: sequential loop iterations per run (nested loops multiply).
    extra: work of the loop iterations after the first.
    contraction_flops, grouped_conv_flops, depthwise_conv_flops: the
      contraction counts of the text, every loop iteration included.
    unknown_trip_loops: loops counted once for want of a trip count.
    kernel_bytes: bytes the kernels move, every run included.
    resident_bytes: the part of ``kernel_bytes`` moved by kernels that
      move at most :data:`ops.RESIDENT_BYTES` each (cache-resident).
    strided_bytes: the part of ``kernel_bytes`` moved by transposes that
      change the minor (contiguous) dimension (:func:`ops.moves_minor`) in
      kernels moving more than :data:`ops.STRIDED_BYTES`; not part of
      ``resident_bytes``.
  """

  kernels: float = 0.0
  iterations: float = 0.0
  extra: ops.Work = ops.Work()
  contraction_flops: float = 0.0
  grouped_conv_flops: float = 0.0
  depthwise_conv_flops: float = 0.0
  unknown_trip_loops: int = 0
  kernel_bytes: float = 0.0
  resident_bytes: float = 0.0
  strided_bytes: float = 0.0

  @property
  def resident_fraction(self) -> float:
    return self.resident_bytes / self.kernel_bytes if self.kernel_bytes else 0.0


def lowered_loop_terms(stablehlo_text: str) -> LoopTerms:
  """:class:`LoopTerms` of a lowered (StableHLO) program; kernels are the
  estimate of :func:`ops.is_kernel` before fusion."""
  structure = loop_counts.stablehlo_loops(stablehlo_text)
  kernels, extra, moved = 0.0, ops.Work(), _Moved()
  contractions = grouped = depthwise = 0.0
  for op in structure.ops:
    kernel = ops.is_kernel(op.opcode, compiled=False)
    contraction = 0.0
    if "convolution" in op.opcode or "dot_general" in op.opcode:
      contraction = contraction_flops(op.line)
      g, d = conv_flops(op.line)
      contractions += op.times * contraction
      grouped, depthwise = grouped + op.times * g, depthwise + op.times * d
    work = _stablehlo_work(op, contraction)
    moved.add(work.bytes, op.times,
              work.bytes if _stablehlo_strided(op) else 0.0)
    if not kernel:  # fused into a neighbour: no traffic of its own
      work = dataclasses.replace(work, bytes=0.0)
    kernels += op.times if kernel else 0.0
    if op.times > 1:
      extra = extra.plus(work.times(op.times - 1))
  # A loop's condition and its counter's update are kernels of their own
  # (scalar ops with nothing to fuse with), once per iteration each.
  kernels += 2 * structure.loop_iterations
  return LoopTerms(kernels, structure.loop_iterations, extra, contractions,
                   grouped, depthwise, structure.unknown_trip_loops,
                   moved.total, moved.resident, moved.strided)


@dataclasses.dataclass
class _Moved:
  """Bytes moved by kernels; the strided part, and the cache-resident part
  of the rest."""

  total: float = 0.0
  resident: float = 0.0
  strided: float = 0.0

  def add(self, kernel_bytes: float, times: float,
          strided: float = 0.0) -> None:
    """A kernel's bytes, run ``times`` times; ``strided`` of them strided.

    A transpose within a core's private cache (:data:`ops.STRIDED_BYTES`)
    costs about what a copy does: it is charged as any kernel of its size.
    """
    if kernel_bytes <= ops.STRIDED_BYTES:
      strided = 0.0
    self.total += kernel_bytes * times
    self.strided += strided * times
    if kernel_bytes <= ops.RESIDENT_BYTES:
      self.resident += (kernel_bytes - strided) * times


_TRANSPOSE_DIMS = re.compile(r"dims = \[([0-9, ]*)\]")


def _stablehlo_strided(op: loop_counts.Op) -> bool:
  """A ``stablehlo.transpose`` that moves the minor dimension."""
  if not op.opcode.endswith("transpose"):
    return False
  m = _TRANSPOSE_DIMS.search(op.line)
  operands = ops.stablehlo_tensors(op.line.rpartition(" : ")[2])
  if m is None or not operands:
    return False
  perm = tuple(int(d) for d in m.group(1).split(",") if d.strip())
  return ops.moves_minor(operands[0].dims, perm)


def _stablehlo_work(op: loop_counts.Op, contraction: float) -> ops.Work:
  """Work of one StableHLO op, unfused.

  Only the bytes of ops that start a kernel count towards a loop body's
  traffic: after fusion, the elementwise ops around a kernel move no memory
  of their own (this estimates a loop body's fused traffic within a factor
  of about 1.5 of the compiled program's, where the unfused count is 2-3×
  high). The resident share of the traffic is read from every op.
  """
  head, _, types = op.line.rpartition(" : ")
  if not head:
    return ops.Work()
  if "->" in types:
    ins, _, outs = types.partition("->")
    operands, results = ops.stablehlo_tensors(ins), ops.stablehlo_tensors(outs)
  else:  # one type for the operands and the result
    results = ops.stablehlo_tensors(types)
    operands = results[:1] * max(head.split(op.opcode, 1)[-1].count("%"), 1)
  work = ops.elementwise(op.opcode, results, operands)
  return ops.Work(contraction or work.flops, work.transcendentals,
                  ops.moved_bytes(op.opcode, results, operands))


def compiled_loop_terms(hlo_text: str) -> LoopTerms:
  """:class:`LoopTerms` of a compiled program (``Compiled.as_text()``):
  kernels are its fusions, custom calls and other real instructions."""
  comps, entry = loop_counts.hlo_computations(hlo_text)
  structure = loop_counts.hlo_loops_of(comps, entry)
  kernels, extra = 0.0, ops.Work()
  insts = {inst.name: inst for body in comps.values() for inst in body}
  moved = _Moved()
  for op in structure.ops:
    if not ops.is_kernel(op.opcode, compiled=True) or op.opcode == "call":
      continue
    kernels += op.times if op.launched else 0.0
    inst = op.instruction
    if inst is None:
      continue
    traffic, strided = kernel_traffic(inst, insts, comps)
    moved.add(traffic, op.times, strided)
    if op.times > 1:
      work = _instruction_flops(inst, insts, comps, 0)
      extra = extra.plus(ops.Work(work.flops, work.transcendentals,
                                  traffic).times(op.times - 1))
  return LoopTerms(kernels, structure.loop_iterations, extra,
                   unknown_trip_loops=structure.unknown_trip_loops,
                   kernel_bytes=moved.total, resident_bytes=moved.resident,
                   strided_bytes=moved.strided)


_CALLS = re.compile(r"calls=%?([^\s,}]+)")
_LHS_CONTRACTING = re.compile(r"lhs_contracting_dims=\{([0-9,]*)\}")
_DIM_LABELS = re.compile(r"dim_labels=\w+_(\w+)->")
_PERMUTATION = re.compile(r"dimensions=\{([0-9,]*)\}")


def kernel_traffic(inst: loop_counts.Instruction, insts, comps
                   ) -> tuple[float, float]:
  """``(bytes, strided bytes)`` one compiled kernel moves.

  A fusion reads what its fused computation reads: an operand used only
  through slices (a scan's step of stacked weights) costs the slices, the
  buffer a ``dynamic-update-slice`` updates in place costs nothing, and it
  writes its results (an in-place update: the update only). The strided
  part is twice the result of each transpose or copy in it that changes
  the minor dimension (:func:`ops.moves_minor`). Other kernels: operands
  plus results (:func:`ops.moved_bytes`).
  """
  m = _CALLS.search(inst.attributes)
  body = comps.get(m.group(1)) if inst.opcode == "fusion" and m else None
  if body:
    local = {i.name: i for i in body}
    users: dict[str, list] = {}
    for i in body:
      for o in i.operands:
        users.setdefault(o, []).append(i)
    reads = sum(_read_bytes(i, users, 0) for i in body
                if i.opcode == "parameter")
    root = next((i for i in body if i.line.startswith("ROOT")), body[-1])
    outs = ([local[o] for o in root.operands if o in local]
            if root.opcode == "tuple" else [root])
    total = reads + sum(_written_bytes(o, local, 0) for o in outs)
    strided = sum(2.0 * _bytes(i.type) for i in body
                  if _is_strided(i, local))
    return total, min(strided, total)
  results = ops.hlo_tensors(inst.type)
  operands = [t for o in inst.operands if o in insts
              for t in ops.hlo_tensors(insts[o].type)]
  total = ops.moved_bytes(inst.opcode, results, operands, root=inst.name)
  return total, total if _is_strided(inst, insts) else 0.0


def _bytes(type_text: str) -> float:
  return float(sum(t.bytes for t in ops.hlo_tensors(type_text)))


def _read_bytes(inst, users, depth: int) -> float:
  """Bytes a fused computation reads of ``inst`` (a parameter, or a
  bitcast of one)."""
  full = _bytes(inst.type)
  total = 0.0
  for user in users.get(inst.name, ()):
    first = user.operands[:1] == (inst.name,)
    if user.opcode == "bitcast" and depth < 8:
      total += _read_bytes(user, users, depth + 1)
    elif first and user.opcode in ("slice", "dynamic-slice", "gather"):
      total += _bytes(user.type)
    elif not (first and user.opcode == "dynamic-update-slice"):
      return full
  return min(total, full)


def _written_bytes(inst, local, depth: int) -> float:
  """Bytes a fused computation writes for its output ``inst``."""
  if inst.opcode == "bitcast" and inst.operands and depth < 8:
    source = local.get(inst.operands[0])
    if source is not None:
      return _written_bytes(source, local, depth + 1)
  if inst.opcode == "dynamic-update-slice" and len(inst.operands) > 1:
    update = local.get(inst.operands[1])
    if update is not None:
      return _bytes(update.type)
  return _bytes(inst.type)


def _is_strided(inst, insts) -> bool:
  """A transpose or copy of ``insts`` that changes the minor dimension."""
  if inst.opcode not in ("transpose", "copy") or not inst.operands:
    return False
  source = insts.get(inst.operands[0])
  if source is None:
    return False
  dims, operand_layout = ops.hlo_layout(source.type)
  _, result_layout = ops.hlo_layout(inst.type)
  perm = tuple(range(len(dims)))
  if inst.opcode == "transpose":
    m = _PERMUTATION.search(inst.attributes)
    if m is None:
      return False
    perm = tuple(int(d) for d in m.group(1).split(",") if d)
  return ops.moves_minor(dims, perm, operand_layout, result_layout)


def _instruction_flops(inst, insts, comps, depth: int) -> ops.Work:
  m = _CALLS.search(inst.attributes)
  if inst.opcode == "fusion" and m and depth < 8:
    total = ops.Work()
    for inner in comps.get(m.group(1), ()):
      total = total.plus(_instruction_flops(inner, insts, comps, depth + 1))
    return total
  results = ops.hlo_tensors(inst.type)
  operands = [t for o in inst.operands if o in insts
              for t in ops.hlo_tensors(insts[o].type)]
  out = sum(t.elements for t in results)
  if inst.opcode == "dot" and operands:
    m = _LHS_CONTRACTING.search(inst.attributes)
    axes = [int(a) for a in m.group(1).split(",") if a] if m else []
    lhs = operands[0].dims
    return ops.Work(2.0 * out * math.prod(lhs[a] for a in axes
                                          if a < len(lhs)))
  if inst.opcode == "convolution" and len(operands) > 1:
    m = _DIM_LABELS.search(inst.attributes)
    rhs = operands[1].dims
    if m and len(m.group(1)) == len(rhs):
      return ops.Work(2.0 * out * math.prod(
          d for label, d in zip(m.group(1), rhs) if label != "o"))
  return ops.elementwise(inst.opcode, results, operands)


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
  terms = LoopTerms()
  try:
    text = lowered.as_text()
    peak = _io_bytes(lowered) + largest_tensor_bytes(text)
    terms = lowered_loop_terms(text)
  except Exception:  # noqa: BLE001 - an estimate only; unknown is fine
    peak = None
  return _with_loops(CostFeatures(
      flops=counts[_FLOPS], bytes_accessed=counts[_BYTES],
      transcendentals=counts[_TRANSCENDENTALS],
      grouped_conv_flops=terms.grouped_conv_flops,
      depthwise_conv_flops=terms.depthwise_conv_flops,
      contraction_flops=terms.contraction_flops, peak_memory=peak,
      peak_memory_exact=False), terms)


def analyse_compiled(compiled: Any) -> CostFeatures:
  """Cost and exact peak memory of a ``jax.stages.Compiled``."""
  counts = read_cost_analysis(_safe(compiled.cost_analysis))
  peak = read_memory_analysis(_safe(compiled.memory_analysis))
  try:
    terms = compiled_loop_terms(compiled.as_text())
  except Exception:  # noqa: BLE001 - no text: XLA's counts alone
    terms = LoopTerms()
  return _with_loops(CostFeatures(
      flops=counts[_FLOPS], bytes_accessed=counts[_BYTES],
      transcendentals=counts[_TRANSCENDENTALS], peak_memory=peak,
      peak_memory_exact=peak is not None), terms)


def _with_loops(features: CostFeatures, terms: LoopTerms) -> CostFeatures:
  """XLA's once-per-body counts plus every further loop iteration, and the
  launch counts."""
  def add(v, extra):
    return None if v is None else v + extra
  return dataclasses.replace(
      features, flops=add(features.flops, terms.extra.flops),
      bytes_accessed=add(features.bytes_accessed, terms.extra.bytes),
      transcendentals=add(features.transcendentals,
                          terms.extra.transcendentals),
      kernels=terms.kernels, inner_loop_iterations=terms.iterations,
      resident_bytes=(add(features.bytes_accessed, terms.extra.bytes) or 0.0)
      * terms.resident_fraction,
      strided_bytes=min(terms.strided_bytes, add(
          features.bytes_accessed, terms.extra.bytes) or 0.0))


def merge_compiled(lowered: CostFeatures,
                   compiled: CostFeatures) -> CostFeatures:
  """The compiled program's numbers where known (fused bytes, exact memory).

  Each field comes from where its ``merge`` metadata says
  (:data:`~autontk.costmodel.features.MERGE`), the lowered program's value
  where that one is unknown. Off CPU, FLOPs never fall below the contractions counted in the lowered
  text: GPU backends report custom-call matmuls as -1 (unknown). On CPU the
  compiled count is exact, and may be lower after XLA's simplifications.
  The convolution split comes from the lowered text (the compiled analysis
  has none). Kernels and loop iterations are the compiled program's where
  its text was read (fusion done; XLA:CPU compiles tiny loops into one
  kernel, whose iterations cost next to nothing).
  """
  read = compiled.kernels > 0
  sources = {"lowered": lowered, "compiled": compiled,
             "compiled_text": compiled if read else lowered}
  merged = {}
  for f in dataclasses.fields(CostFeatures):
    value = getattr(sources[f.metadata["merge"]], f.name)
    merged[f.name] = getattr(lowered, f.name) if value is None else value
  if compiled.bytes_accessed is None:
    # The resident and strided parts of the bytes come from where the bytes
    # do.
    merged["resident_bytes"] = lowered.resident_bytes
    merged["strided_bytes"] = lowered.strided_bytes
  if lowered.contraction_flops and (compiled.flops is None or
                                    jax.default_backend() != "cpu"):
    merged["flops"] = max(merged["flops"] or 0.0, lowered.contraction_flops)
  return CostFeatures(**merged)


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
