"""``precision``: error of float32 kernels under each ``precision`` setting.

For each model of :func:`bench.zoo.functions.option_models` (quick sizes)
and each explicit method, the float32 kernel computed with
``precision="default"`` and ``"highest"`` is compared with the same
method's kernel in float64 (parameters and inputs cast up, 64-bit mode on
for the suite's duration): ``rel_err = max |K32 - K64| / max |K64|``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import autontk
from bench.config import RunConfig
from bench.zoo import functions as zoo

EXPLICIT = ("jacobian_contraction", "ntk_vector_products",
            "structured_derivatives")
PRECISIONS = ("default", "highest")


def _cast(tree, dtype):
  return jax.tree.map(lambda v: jnp.asarray(v, dtype), tree)


def _row(m: zoo.Model, impl: str) -> dict[str, Any]:
  p32, x32 = _cast(m.params, jnp.float32), _cast(m.x1, jnp.float32)
  p64, x64 = _cast(m.params, jnp.float64), _cast(m.x1, jnp.float64)
  ref = np.asarray(autontk.ntk_fn(m.f, implementation=impl, vmap_axes=0)(
      x64, None, p64))
  row: dict[str, Any] = {"method": impl}
  for precision in PRECISIONS:
    k = autontk.ntk_fn(m.f, implementation=impl, vmap_axes=0,
                       precision=precision)(x32, None, p32)
    assert k.dtype == jnp.float32
    row[precision] = float(np.abs(np.asarray(k, np.float64) - ref).max()
                           / np.abs(ref).max())
  return row


def run(cfg: RunConfig, log=print) -> dict[str, Any]:
  """One row per model and method: relative error of each precision."""
  rows = []
  with jax.enable_x64(True):
    for name, m in zoo.option_models(quick=True).items():
      if not cfg.selected(name):
        continue
      for impl in EXPLICIT:
        rows.append({"model": name, **_row(m, impl)})
        log(rows[-1])
  return {"rows": rows}


def markdown(res: dict[str, Any]) -> str:
  lines = ["Relative error of float32 kernels against float64.", "",
           "| model | method | " + " | ".join(f"`{p}`" for p in PRECISIONS)
           + " |", "|---|---|" + "---|" * len(PRECISIONS)]
  for r in res["rows"]:
    lines.append(f"| {r['model']} | {r['method']} | "
                 + " | ".join(f"{r[p]:.2e}" for p in PRECISIONS) + " |")
  return "\n".join(lines) + "\n"
