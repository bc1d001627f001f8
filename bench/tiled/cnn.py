"""The small CNN of the tiled benchmarks, its data, and machine facts.

conv 3×3 (C→8) · relu · conv 3×3 stride 2 (8→8) · relu · global average pool
· dense (8→10). Plain JAX, so every script rebuilds the same model and data
from a seed.
"""

from __future__ import annotations

import os
import platform
import resource

import jax
import jax.numpy as jnp
from jax import lax


def model(image: int = 8, channels: int = 3, width: int = 8,
          classes: int = 10, seed: int = 0):
  """``(f, params)`` of the small CNN on ``image × image × channels`` inputs."""
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = {
      "c1": (jax.random.normal(k[0], (3, 3, channels, width)) /
             (9 * channels) ** 0.5),
      "b1": jnp.zeros((width,)),
      "c2": jax.random.normal(k[1], (3, 3, width, width)) / (9 * width) ** 0.5,
      "b2": jnp.zeros((width,)),
      "w": jax.random.normal(k[2], (width, classes)) / width ** 0.5,
      "b": jnp.zeros((classes,)),
  }
  dn = ("NHWC", "HWIO", "NHWC")

  def f(p, x):
    y = lax.conv_general_dilated(x, p["c1"], (1, 1), "SAME",
                                 dimension_numbers=dn) + p["b1"]
    y = jax.nn.relu(y)
    y = lax.conv_general_dilated(y, p["c2"], (2, 2), "SAME",
                                 dimension_numbers=dn) + p["b2"]
    y = jax.nn.relu(y)
    return jnp.mean(y, axis=(1, 2)) @ p["w"] + p["b"]

  return f, params


def data(n: int, image: int = 8, channels: int = 3, seed: int = 1):
  return jax.random.normal(jax.random.PRNGKey(seed),
                           (n, image, image, channels))


def n_params(params) -> int:
  return sum(int(v.size) for v in jax.tree.leaves(params))


def peak_rss_bytes() -> int:
  """Peak resident memory of this process (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine() -> dict:
  mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as fh:
      for line in fh:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return {"cpu": cpu, "cores": os.cpu_count(),
          "memory_gib": round(mem / 2**30, 1), "jax": jax.__version__,
          "python": platform.python_version()}
