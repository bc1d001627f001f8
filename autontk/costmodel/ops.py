"""The work of one operation, read from its line of StableHLO or HLO text.

:mod:`~autontk.costmodel.loop_counts` says how often each operation of a program
runs; this module says what one run of it costs: FLOPs, transcendentals,
bytes moved, and whether it is a *kernel*, a unit of work the runtime
launches on its own.

What a kernel is:

* **compiled HLO** (what runs): every instruction of the entry computation
  and of loop bodies, conditions, branches and called computations, except
  those that move no data (``parameter``, ``constant``,
  ``get-tuple-element``, ``tuple``, ``bitcast``, the ``-done`` halves of
  asynchronous pairs...). A fusion is one kernel, whatever it fuses; so is
  a custom call (a GPU library GEMM) and a ``copy``. On CPU each one is a
  thunk the runtime dispatches in turn; on GPU each one is (at least) a
  kernel launch.
* **lowered StableHLO** (before fusion): an estimate of the same count.
  Elementwise operations, broadcasts and reshapes fuse into their neighbours
  and are not counted; each contraction (``dot_general``, convolution),
  reduction, gather/scatter, dynamic slice or update, sort, concatenation
  and custom call starts a kernel of its own, as do the transposes XLA
  cannot fold.

The work mirrors XLA's cost analysis closely enough to price the
iterations of a loop body beyond the first, which the analysis leaves out:
FLOPs of contractions exactly, one FLOP per element of other arithmetic,
a transcendental per element of ``exp``/``tanh``/...; bytes as operands plus
results, with in-place updates and slices charged for the slice only.
"""

from __future__ import annotations

import dataclasses
import math
import re

_ITEMSIZE = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2, "i64": 8, "i32": 4,
             "i16": 2, "i8": 1, "i1": 1, "ui64": 8, "ui32": 4, "ui16": 2,
             "ui8": 1, "s64": 8, "s32": 4, "s16": 2, "s8": 1, "u64": 8,
             "u32": 4, "u16": 2, "u8": 1, "pred": 1, "c64": 8, "c128": 16,
             "complex<f32>": 8, "complex<f64>": 16, "f8e4m3fn": 1,
             "f8e5m2": 1}

_TRANSCENDENTAL = frozenset((
    "exponential", "exponential-minus-one", "log", "log-plus-one", "logistic",
    "tanh", "sine", "cosine", "tan", "power", "sqrt", "rsqrt", "cbrt",
    "atan2", "erf"))
_ARITHMETIC = frozenset((
    "add", "subtract", "multiply", "divide", "remainder", "maximum",
    "minimum", "negate", "abs", "sign", "compare", "select", "clamp",
    "floor", "ceil", "round-nearest-even", "round-nearest-afz", "and", "or",
    "xor", "not", "convert", "exp", "reduce-precision", "real", "imag",
    "is-finite", "shift-left", "shift-right-logical",
    "shift-right-arithmetic", "popcnt", "count-leading-zeros"))
_FREE = frozenset((
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast",
    "after-all", "add-dependency", "opt-barrier", "optimization-barrier",
    "domain", "partition-id", "replica-id", "get-dimension-size",
    "return", "func-return", ""))
_UNFUSED_KERNELS = frozenset((
    "dot", "dot-general", "convolution", "reduce", "reduce-window",
    "select-and-scatter", "scatter", "gather", "dynamic-slice",
    "dynamic-update-slice", "sort", "concatenate", "custom-call", "fft",
    "rng", "rng-bit-generator", "cholesky", "triangular-solve", "transpose",
    "pad", "reverse", "all-reduce", "all-gather", "reduce-scatter",
    "all-to-all", "collective-permute", "iota", "cumsum", "top-k"))
"""StableHLO ops that start a kernel of their own after fusion."""


RESIDENT_BYTES = 16 * 2**20
"""A kernel moving at most this many bytes (reads plus writes) works from
the cache: its traffic is charged at the device's cache-resident bandwidth
(:attr:`~autontk.costmodel.device.DeviceConstants.resident_bytes_per_s`),
larger ones at streaming bandwidth."""


STRIDED_BYTES = 2**20
"""A kernel that transposes the minor dimension (:func:`moves_minor`) and
moves more than this many bytes strides past the core's private caches:
its traffic is charged at the device's strided bandwidth
(:attr:`~autontk.costmodel.device.DeviceConstants.strided_bytes_per_s`);
a smaller one as any other kernel of its size."""


def normalise(opcode: str) -> str:
  """``"stablehlo.log_plus_one"`` and ``"log-plus-one"`` -> the HLO name."""
  name = opcode.rsplit(".", 1)[-1].replace("_", "-")
  return {"dot-general": "dot", "optimization-barrier": "opt-barrier",
          "exponential": "exponential"}.get(name, name)


def is_kernel(opcode: str, compiled: bool) -> bool:
  """Whether one run of this op is one kernel (see the module docstring)."""
  name = normalise(opcode)
  if compiled:
    return name not in _FREE and not name.endswith("-done")
  return name in _UNFUSED_KERNELS


@dataclasses.dataclass(frozen=True)
class Tensor:
  """A tensor type: its dimensions and item size."""

  dims: tuple[int, ...]
  itemsize: int

  @property
  def elements(self) -> int:
    return math.prod(self.dims)

  @property
  def bytes(self) -> int:
    return self.elements * self.itemsize


_SHLO_TENSOR = re.compile(r"tensor<((?:\d+x)*)([a-z][a-z0-9]*(?:<\w+>)?)>")
_HLO_TENSOR = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")


def _tensor(dims: list[int], dtype: str) -> Tensor | None:
  size = _ITEMSIZE.get(dtype)
  return None if size is None else Tensor(tuple(dims), size)


def stablehlo_tensors(text: str) -> list[Tensor]:
  """Tensor types named in a piece of StableHLO, in order."""
  out = []
  for dims, dtype in _SHLO_TENSOR.findall(text):
    t = _tensor([int(d) for d in dims.split("x") if d], dtype)
    if t is not None:
      out.append(t)
  return out


def hlo_tensors(text: str) -> list[Tensor]:
  """Array shapes named in a piece of HLO text (``f32[8,64]``), in order."""
  out = []
  for dtype, dims in _HLO_TENSOR.findall(text):
    t = _tensor([int(d) for d in dims.split(",") if d], dtype)
    if t is not None:
      out.append(t)
  return out


@dataclasses.dataclass(frozen=True)
class Work:
  """The work of one run of one operation."""

  flops: float = 0.0
  transcendentals: float = 0.0
  bytes: float = 0.0

  def plus(self, other: "Work") -> "Work":
    return Work(self.flops + other.flops,
                self.transcendentals + other.transcendentals,
                self.bytes + other.bytes)

  def times(self, k: float) -> "Work":
    return Work(self.flops * k, self.transcendentals * k, self.bytes * k)


def elementwise(opcode: str, results: list[Tensor],
                operands: list[Tensor]) -> Work:
  """FLOPs and transcendentals of a non-contraction op (bytes: none)."""
  name = normalise(opcode)
  out = sum(t.elements for t in results)
  if name in _TRANSCENDENTAL:
    return Work(0.0, float(out))
  if name in _ARITHMETIC:
    return Work(float(out))
  if name in ("reduce", "reduce-window"):
    return Work(float(sum(t.elements for t in operands[:1])))
  return Work()


def moves_minor(dims: tuple[int, ...], perm: tuple[int, ...],
                operand_layout: tuple[int, ...] | None = None,
                result_layout: tuple[int, ...] | None = None) -> bool:
  """Whether a transpose (or a layout-changing copy) is *strided*: the
  result's contiguous (minor) dimension is not the operand's.

  Such a copy reads or writes with a stride, element by element, at a small
  fraction of streaming bandwidth on CPUs (a copy that keeps the minor
  dimension moves contiguous rows); dimensions of size 1 are ignored.

  Args:
    dims: the operand's dimensions.
    perm: result dimension ``i`` is operand dimension ``perm[i]`` (the
      identity for a copy).
    operand_layout, result_layout: minor-to-major dimension orders
      (``None``: row-major).

  >>> moves_minor((64, 32), (1, 0)), moves_minor((8, 1, 32), (1, 0, 2))
  (True, False)
  """
  n = len(dims)
  if len(perm) != n:
    return False
  row_major = tuple(range(n - 1, -1, -1))
  operand_layout = operand_layout or row_major
  result_layout = result_layout or row_major
  source = next((d for d in operand_layout if dims[d] > 1), None)
  target = next((perm[d] for d in result_layout if dims[perm[d]] > 1), None)
  return source is not None and source != target


_LAYOUT = re.compile(r"\[([0-9,]*)\]\{([0-9,]*)")


def hlo_layout(type_text: str
               ) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
  """``(dims, minor-to-major layout)`` of the first array type in HLO text
  (``f32[8,64]{0,1}`` -> ``((8, 64), (0, 1))``; layout ``None`` if absent).
  """
  tensors = hlo_tensors(type_text)
  dims = tensors[0].dims if tensors else ()
  m = _LAYOUT.search(type_text)
  if m is None or not m.group(2):
    return dims, None
  return dims, tuple(int(d) for d in m.group(2).split(","))


def moved_bytes(opcode: str, results: list[Tensor], operands: list[Tensor],
                root: str = "") -> float:
  """Bytes read and written by one op: operands plus results, except that
  a slice reads what it writes and an in-place update touches its update
  only.

  Args:
    opcode: the op's opcode.
    results, operands: its result and operand types.
    root: for a fusion, what it computes (XLA names a fusion after its
      root, e.g. ``bitcast_dynamic-update-slice_fusion``).
  """
  name = normalise(opcode)
  kind = f"{name} {root}"
  out = sum(t.bytes for t in results)
  if name in _FREE:
    return 0.0
  if "dynamic-update-slice" in kind or name == "scatter":
    return 2.0 * sum(t.bytes for t in operands[1:])
  if "dynamic-slice" in kind or name in ("slice", "gather"):
    return 2.0 * out
  return float(out + sum(t.bytes for t in operands))
