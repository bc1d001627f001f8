"""Per-device constants for the time predictor, measured once and stored.

A short micro-benchmark (a few seconds) measures, on the current default
device: dense matmul throughput (FLOP/s), streaming, cache-resident and
strided (a transpose that moves the minor dimension) memory bandwidth
(bytes/s), grouped and depthwise convolution throughput, and the launch
terms: the overhead of one jitted call, of one kernel (a fusion, a custom
call: see :mod:`~autontk.costmodel.ops`) and of one loop iteration beyond
its kernels. The launch terms come from a least-squares fit over small
programs, scanned bodies of several contractions per iteration among them,
whose kernels and loop iterations are counted from their compiled text,
exactly as the cost model counts them in real programs.

The result is stored as JSON, keyed by platform, device kind and jax
version, in two places: the autontk cache directory
(``$AUTONTK_CACHE_DIR``, else ``platformdirs.user_cache_dir``) and the
machine-level user cache directory, so that a fresh cache directory on a
machine whose device kind was measured before reuses the measurement
instead of running the benchmark again. An entry written before the launch
terms or the resident bandwidth existed is completed (only what it lacks is
measured), never discarded or fatal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import platformdirs

from autontk import _paths, _xla_options
from autontk.costmodel import loop_counts, ops

_FILE = "device_constants.json"
_LAUNCH = ("call_overhead_s", "kernel_s", "loop_iteration_s")
"""The launch terms, measured together (:func:`measure_launch`)."""


@dataclasses.dataclass(frozen=True)
class DeviceConstants:
  """Measured speeds of one device.

  Attributes:
    flops_per_s: dense float32 matmul throughput.
    bytes_per_s: streaming (elementwise) memory bandwidth.
    call_overhead_s: fixed cost of dispatching one compiled call.
    loop_iteration_s: extra cost of one iteration of a compiled loop.
    device_kind: ``jax.Device.device_kind`` of the measured device.
    platform: ``"cpu"``, ``"gpu"``, ``"tpu"``...
    grouped_conv_flops_per_s: throughput of a grouped convolution of the
      kind per-example weight gradients produce (``None``: dense speed).
    depthwise_conv_flops_per_s: throughput of a depthwise convolution.
    kernel_s: cost of launching one kernel (thunk dispatch on CPU, kernel
      launch on GPU), beyond its FLOPs and bytes.
    resident_bytes_per_s: bandwidth of a kernel whose traffic fits in the
      cache (:data:`~autontk.costmodel.ops.RESIDENT_BYTES`); ``None``:
      ``bytes_per_s``.
    strided_bytes_per_s: bandwidth of a transpose that changes the minor
      dimension (:func:`~autontk.costmodel.ops.moves_minor`); ``None``:
      ``bytes_per_s``.
  """

  flops_per_s: float
  bytes_per_s: float
  call_overhead_s: float
  loop_iteration_s: float
  device_kind: str = ""
  platform: str = ""
  grouped_conv_flops_per_s: float | None = None
  depthwise_conv_flops_per_s: float | None = None
  kernel_s: float = 0.0
  resident_bytes_per_s: float | None = None
  strided_bytes_per_s: float | None = None

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @staticmethod
  def from_dict(d: dict[str, Any]) -> "DeviceConstants":
    """Inverse of :meth:`to_dict`; raises ``KeyError`` on a stale entry
    (:func:`missing` names what is missing)."""
    lacking = missing(d)
    if lacking:
      raise KeyError(f"device constants lack {lacking}")
    fields = [f.name for f in dataclasses.fields(DeviceConstants)]
    return DeviceConstants(**{k: d[k] for k in fields})


def missing(d: Any) -> list[str]:
  """Fields a stored entry lacks (all of them if it is not a dict)."""
  fields = [f.name for f in dataclasses.fields(DeviceConstants)]
  if not isinstance(d, dict):
    return fields
  return [k for k in fields if k not in d]


def device_key(device: Any = None) -> str:
  """The device, the JAX release and the XLA options the library compiles
  with there (constants measured under other options describe other
  kernels)."""
  device = device or jax.devices()[0]
  key = f"{device.platform}|{device.device_kind}|jax {jax.__version__}"
  options = _xla_options.compiler_options(device.platform)
  return key + (f"|{sorted(options.items())}" if options else "")


def _best_time(fn: Callable[[], Any], repeats: int = 5) -> float:
  jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return best


def measure(device: Any = None, size: int | None = None) -> DeviceConstants:
  """Runs the micro-benchmark on ``device`` (a few seconds on a CPU).

  Best-of-several timings, so that a busy machine reads closer to the
  device's real speed. Accelerators get larger problems (a 4096² matmul, a
  256 MB stream), so that launch latency does not pass for throughput.

  Args:
    device: the device (default: the first one).
    size: matmul size (default: 768 on CPU, 4096 elsewhere).
  """
  device = device or jax.devices()[0]
  cpu = device.platform == "cpu"
  size = size or (768 if cpu else 4096)
  stream = 1 << (22 if cpu else 26)  # 16 MB (past CPU caches) / 256 MB
  with jax.default_device(device):
    a = jnp.ones((size, size), jnp.float32)
    matmul = _xla_options.Jitted(lambda x: x @ x, device.platform)
    flops = 2.0 * size ** 3 / _best_time(lambda: matmul(a))

    v = jnp.ones((stream,), jnp.float32)
    axpy = _xla_options.Jitted(lambda x: 2.0 * x + 1.0, device.platform)
    bandwidth = 2.0 * v.nbytes / _best_time(lambda: axpy(v))

    grouped, depthwise = _conv_rates(device.platform)
    strided = measure_strided_bandwidth(device, 1000 if cpu else 4000)
  launch = measure_launch(device, flops)
  return DeviceConstants(
      flops, bandwidth, launch["call_overhead_s"], launch["loop_iteration_s"],
      device.device_kind, device.platform, grouped, depthwise,
      launch["kernel_s"], measure_resident_bandwidth(device), strided)


def measure_strided_bandwidth(device: Any = None, rows: int = 1000) -> float:
  """Bytes/s of a transpose that changes the minor dimension.

  A ``rows × 2 rows`` float32 matrix transposed (16 MB of traffic on a CPU,
  past a core's private caches, :data:`ops.STRIDED_BYTES`): what the copies
  of a Jacobian stacked over a scan's steps, moved batch-major, do. The
  rows are not a power of two: a power-of-two stride also conflicts in the
  cache's sets and runs several times slower still, a worst case rather
  than the typical one.
  """
  device = device or jax.devices()[0]
  with jax.default_device(device):
    a = jnp.ones((rows, 2 * rows), jnp.float32)
    transpose = _xla_options.Jitted(lambda x: x.T + 1.0, device.platform)
    seconds = _best_time(lambda: transpose(a))
  return 2.0 * a.nbytes / seconds


def measure_resident_bandwidth(device: Any = None) -> float:
  """Bytes/s of an elementwise kernel whose traffic fits in the cache.

  A loop of 16 updates of a 4 MB array in place (8 MB of traffic each, below
  :data:`ops.RESIDENT_BYTES`): what a loop body accumulating into a
  buffer does; the loop amortises the call overhead.
  """
  device = device or jax.devices()[0]
  n, steps = 1 << 20, 16
  with jax.default_device(device):
    acc = jnp.ones((n,), jnp.float32)
    update = _xla_options.Jitted(lambda a: jax.lax.fori_loop(
        0, steps, lambda i, a: a * 0.999 + 1.0, a), device.platform)
    seconds = _best_time(lambda: update(acc), repeats=7)
  return 2.0 * acc.nbytes * steps / seconds


def count_launches(compiled: Any) -> tuple[float, float]:
  """``(kernels, loop iterations)`` of one run of a compiled program, as
  :func:`autontk.costmodel.hlo.compiled_loop_terms` counts them."""
  structure = loop_counts.hlo_loops(compiled.as_text())
  kernels = sum(op.times for op in structure.ops
                if op.launched and ops.is_kernel(op.opcode, compiled=True))
  return kernels, structure.loop_iterations


def _launch_programs() -> list[tuple[Callable, tuple, float]]:
  """Programs that differ in kernels and loop iterations, with their FLOPs.

  Tiny ones first: each step an 8×8 matmul and a ``tanh``, too small for
  FLOPs or bytes to matter, not fusable into one kernel, and (unlike 4×4
  steps) not compiled by XLA:CPU into one function per loop; in a chain or
  in a ``fori_loop``. Then the shape of scanned layers: a ``lax.scan`` over
  stacked weights with several 32×64 by 64×64 contractions per iteration
  (each step slices its weights out of the stack), and the same layers
  unrolled, so that what an iteration costs beyond its kernels is told
  apart from what the kernels cost.
  """
  w = jnp.full((8, 8), 0.1, jnp.float32)
  x = jnp.ones((8, 8), jnp.float32)

  def chain(k):
    def f(x, w):
      for _ in range(k):
        x = jnp.tanh(x @ w)
      return x
    return f

  def loop(trips, k):
    def f(x, w):
      return jax.lax.fori_loop(0, trips, lambda i, x: chain(k)(x, w), x)
    return f

  def layers(h, ws):
    for j in range(ws.shape[0]):
      h = jnp.tanh(h @ ws[j])
    return h

  def scanned(x, ws):
    return jax.lax.scan(lambda h, w: (layers(h, w), None), x, ws)[0]

  def unrolled(x, ws):
    return layers(x, ws.reshape(-1, *ws.shape[2:]))

  tiny = [(fn, (x, w), 0.0) for fn in (
      chain(1), chain(16), chain(64), loop(256, 1), loop(128, 4),
      loop(32, 16))]
  h = jnp.ones((32, 64), jnp.float32)
  stacked = []
  for trips, k in ((32, 4), (8, 4), (16, 8)):
    ws = jnp.full((trips, k, 64, 64), 0.01, jnp.float32)
    flops = 2.0 * 32 * 64 * 64 * trips * k
    stacked += [(scanned, (h, ws), flops), (unrolled, (h, ws), flops)]
  return tiny + stacked


def measure_launch(device: Any = None,
                   flops_per_s: float | None = None) -> dict[str, float]:
  """The launch terms: ``call_overhead_s``, ``kernel_s``, ``loop_iteration_s``.

  Each program of :func:`_launch_programs` is compiled, its kernels and
  loop iterations counted from its text, and timed (best of several);
  ``time - FLOPs / flops_per_s = call + kernels × kernel + iterations ×
  iteration`` is fitted by least squares over them (negative terms clamped
  to zero). The iteration term is what a loop iteration costs beyond the
  kernels it launches: stepping the loop, and the slices and updates of
  the stacked arrays it reads and writes.
  """
  device = device or jax.devices()[0]
  rows, times, launch = [], [], []
  with jax.default_device(device):
    for fn, args, flops in _launch_programs():
      compiled = _xla_options.Jitted(fn, device.platform).lower(
          *args).compile()
      kernels, iterations = count_launches(compiled)
      rows.append([1.0, kernels, iterations])
      times.append(_best_time(lambda: compiled(*args), repeats=30))
      launch.append(times[-1] - (flops / flops_per_s if flops_per_s else 0.0))
  coef = np.linalg.lstsq(np.asarray(rows), np.asarray(launch), rcond=None)[0]
  call, kernel, iteration = (max(float(c), 0.0) for c in coef)
  if call == 0.0:  # a fit that sent the fixed cost below zero: the least
    call = float(min(times))  # time of any program bounds it
  return {"call_overhead_s": call, "kernel_s": kernel,
          "loop_iteration_s": iteration}


def _conv_rates(platform: str) -> tuple[float, float]:
  """FLOP/s of a grouped and of a depthwise convolution.

  The grouped one has the shape of a per-example weight gradient under
  ``vmap`` (the input's spatial extent acts as the kernel); the depthwise
  one that of patch extraction.
  """
  conv = jax.lax.conv_general_dilated
  g, c, hw, o = 16, 32, 16, 2048
  lhs = jnp.ones((g, hw, hw, c), jnp.float32)
  rhs = jnp.ones((1, hw, hw, o), jnp.float32)
  grouped = _xla_options.Jitted(lambda a, b: conv(
      a, b, (1, 1), [(1, 1), (1, 1)], dimension_numbers=("CHWN", "IHWO",
                                                         "HWNC"),
      feature_group_count=g), platform)
  grouped_flops = 2.0 * 3 * 3 * c * o * hw * hw
  x = jnp.ones((8, hw, hw, 32), jnp.float32)
  w = jnp.ones((3, 3, 1, 32 * 9), jnp.float32)
  depthwise = _xla_options.Jitted(lambda a, b: conv(
      a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=32), platform)
  depthwise_flops = 2.0 * 8 * hw * hw * 32 * 9 * 9
  return (grouped_flops / _best_time(lambda: grouped(lhs, rhs)),
          depthwise_flops / _best_time(lambda: depthwise(x, w)))


def _load_all(path: pathlib.Path) -> dict[str, Any]:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}


def machine_file() -> pathlib.Path:
  """The machine-level copy: the user cache directory's constants file
  (whatever ``$AUTONTK_CACHE_DIR`` says)."""
  return pathlib.Path(platformdirs.user_cache_dir("autontk")) / _FILE


def _files() -> list[pathlib.Path]:
  """Where constants are read, first hit wins, and all are written."""
  here = _paths.cache_directory() / _FILE
  machine = machine_file()
  return [here] if machine == here else [here, machine]


def constants(device: Any = None, remeasure: bool = False) -> DeviceConstants:
  """The device's constants: stored, or measured and stored.

  Looked up in the cache directory, then in the machine-level copy
  (:func:`machine_file`); an entry that lacks a field, or cannot be read,
  is measured again. The result is written to both files. In-process results are
  memoised, so the files are read at most once.
  """
  key = device_key(device)
  if not remeasure and key in _MEMO:
    return _MEMO[key]
  files = _files()
  stored = [_load_all(path) for path in files]
  entry = None if remeasure else next(
      (s[key] for s in stored if not missing(s.get(key))), None)
  try:
    c = DeviceConstants.from_dict(entry) if entry is not None else None
  except (KeyError, TypeError):
    c = None
  if c is None:
    c = measure(device)
  _MEMO[key] = c
  for path, all_entries in zip(files, stored):
    if all_entries.get(key) != c.to_dict():
      _store(path, {**all_entries, key: c.to_dict()})
  return c


def _store(path: pathlib.Path, entries: dict[str, Any]) -> None:
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
    os.replace(tmp, path)  # atomic: concurrent writers never corrupt it
  except OSError:
    pass  # read-only cache: keep the in-process value


_MEMO: dict[str, DeviceConstants] = {}


def _reset_memo() -> None:
  _MEMO.clear()
