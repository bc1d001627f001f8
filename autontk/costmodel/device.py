"""Per-device constants for the time predictor, measured once and stored.

A short micro-benchmark (about a second) measures, on the current default
device: dense matmul throughput (FLOP/s), streaming memory bandwidth
(bytes/s), the overhead of one jitted call, and of one iteration of a
``lax.map`` loop. The result is stored as JSON in the autontk cache
directory (``$AUTONTK_CACHE_DIR``, else ``platformdirs.user_cache_dir``),
keyed by platform, device kind and jax version, and reused by every later
process.
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

from autontk import _paths

_FILE = "device_constants.json"


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
  """

  flops_per_s: float
  bytes_per_s: float
  call_overhead_s: float
  loop_iteration_s: float
  device_kind: str = ""
  platform: str = ""
  grouped_conv_flops_per_s: float | None = None
  depthwise_conv_flops_per_s: float | None = None

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @staticmethod
  def from_dict(d: dict[str, Any]) -> "DeviceConstants":
    """Inverse of :meth:`to_dict`; raises ``KeyError`` on a stale entry."""
    fields = [f.name for f in dataclasses.fields(DeviceConstants)]
    missing = [k for k in fields if k not in d]
    if missing:
      raise KeyError(f"device constants lack {missing}")
    return DeviceConstants(**{k: d[k] for k in fields})


def device_key(device: Any = None) -> str:
  device = device or jax.devices()[0]
  return f"{device.platform}|{device.device_kind}|jax {jax.__version__}"


def _best_time(fn: Callable[[], Any], repeats: int = 5) -> float:
  jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return best


def measure(device: Any = None, size: int | None = None) -> DeviceConstants:
  """Runs the micro-benchmark on ``device`` (about two seconds on a CPU).

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
    matmul = jax.jit(lambda x: x @ x)
    flops = 2.0 * size ** 3 / _best_time(lambda: matmul(a))

    v = jnp.ones((stream,), jnp.float32)
    axpy = jax.jit(lambda x: 2.0 * x + 1.0)
    bandwidth = 2.0 * v.nbytes / _best_time(lambda: axpy(v))

    s = jnp.ones((4,), jnp.float32)
    tiny = jax.jit(lambda x: x + 1.0)
    call = _best_time(lambda: tiny(s), repeats=20)

    iters = 256
    looped = jax.jit(lambda x: jax.lax.map(lambda r: r * 2.0 + 1.0, x))
    rows = jnp.ones((iters, 4), jnp.float32)
    loop = max(_best_time(lambda: looped(rows)) - call, 0.0) / iters

    grouped, depthwise = _conv_rates()
  return DeviceConstants(flops, bandwidth, call, loop, device.device_kind,
                         device.platform, grouped, depthwise)


def _conv_rates() -> tuple[float, float]:
  """FLOP/s of a grouped and of a depthwise convolution.

  The grouped one has the shape of a per-example weight gradient under
  ``vmap`` (the input's spatial extent acts as the kernel); the depthwise
  one that of patch extraction.
  """
  conv = jax.lax.conv_general_dilated
  g, c, hw, o = 16, 32, 16, 2048
  lhs = jnp.ones((g, hw, hw, c), jnp.float32)
  rhs = jnp.ones((1, hw, hw, o), jnp.float32)
  grouped = jax.jit(lambda a, b: conv(
      a, b, (1, 1), [(1, 1), (1, 1)], dimension_numbers=("CHWN", "IHWO",
                                                         "HWNC"),
      feature_group_count=g))
  grouped_flops = 2.0 * 3 * 3 * c * o * hw * hw
  x = jnp.ones((8, hw, hw, 32), jnp.float32)
  w = jnp.ones((3, 3, 1, 32 * 9), jnp.float32)
  depthwise = jax.jit(lambda a, b: conv(
      a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=32))
  depthwise_flops = 2.0 * 8 * hw * hw * 32 * 9 * 9
  return (grouped_flops / _best_time(lambda: grouped(lhs, rhs)),
          depthwise_flops / _best_time(lambda: depthwise(x, w)))


def _load_all(path: pathlib.Path) -> dict[str, Any]:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return {}


def constants(device: Any = None, remeasure: bool = False) -> DeviceConstants:
  """The device's constants: from the cache file, else measured and stored.

  In-process results are memoised, so the file is read at most once.
  """
  key = device_key(device)
  if not remeasure and key in _MEMO:
    return _MEMO[key]
  path = _paths.cache_directory() / _FILE
  stored = _load_all(path)
  if not remeasure and key in stored:
    try:
      _MEMO[key] = DeviceConstants.from_dict(stored[key])
      return _MEMO[key]
    except (KeyError, TypeError):
      pass  # an older file format: measure again
  c = measure(device)
  _MEMO[key] = c
  stored[key] = c.to_dict()
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(stored, indent=1, sort_keys=True))
    os.replace(tmp, path)  # atomic: concurrent writers never corrupt it
  except OSError:
    pass  # read-only cache: keep the in-process value
  return c


_MEMO: dict[str, DeviceConstants] = {}


def _reset_memo() -> None:
  _MEMO.clear()

