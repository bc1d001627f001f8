"""Quickstart: the NTK of a small CNN with implementation="auto".

Prints the plan autontk chose, the cost report of every candidate, and a
check against an explicit method.

    python examples/quickstart.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import autontk


def init(key, channels=16, classes=10):
  k1, k2, k3 = jax.random.split(key, 3)
  return {
      "conv1": jax.random.normal(k1, (3, 3, 3, channels)) / 3.0,
      "conv2": jax.random.normal(k2, (3, 3, channels, channels)) / (3.0 * channels ** 0.5),
      "head": jax.random.normal(k3, (channels, classes)) / channels ** 0.5,
  }


def cnn(params, x):
  """Two 3x3 convolutions, global average pooling and a dense head."""
  dn = ("NHWC", "HWIO", "NHWC")
  h = jax.nn.relu(lax.conv_general_dilated(x, params["conv1"], (1, 1), "SAME",
                                           dimension_numbers=dn))
  h = jax.nn.relu(lax.conv_general_dilated(h, params["conv2"], (1, 1), "SAME",
                                           dimension_numbers=dn))
  return jnp.mean(h, axis=(1, 2)) @ params["head"]


def main():
  kx, kp = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.normal(kx, (16, 8, 8, 3))
  params = init(kp)

  ntk = autontk.ntk_fn(cnn, trace_axes=(), vmap_axes=0, implementation="auto")
  t0 = time.perf_counter()
  plan = ntk.plan(x, None, params)
  print(f"autontk {autontk.__version__} on {jax.devices()[0].device_kind}")
  print(f"chose: {plan.describe()}  (planning took {time.perf_counter() - t0:.2f} s)")
  print()
  print(ntk.report(x, None, params))
  print()

  t0 = time.perf_counter()
  kernel = jax.block_until_ready(ntk(x, None, params))
  print(f"NTK shape {kernel.shape} (N1, N2, O1, O2) in {time.perf_counter() - t0:.2f} s "
        "(first call after planning)")
  check = autontk.ntk_fn(cnn, trace_axes=(), vmap_axes=0,
                         implementation="jacobian_contraction")(x, None, params)
  err = float(jnp.max(jnp.abs(kernel - check)) / jnp.max(jnp.abs(check)))
  print(f"max relative difference to jacobian_contraction: {err:.1e}")
  assert np.isfinite(err) and err < 1e-4


if __name__ == "__main__":
  main()
