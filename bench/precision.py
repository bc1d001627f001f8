"""Error of float32 kernels under each ``precision`` against float64.

``python -m bench.precision [--tag TAG]`` writes
``bench/results/<tag>/precision.json`` and ``precision.md`` (default tag
``kernels-<backend>-<cores>core``). For each model of
:func:`bench.kernels.models` (quick sizes) and each explicit method, the
float32 kernel computed with ``precision="default"`` and ``"highest"`` is
compared with the same method's kernel in float64 (parameters and inputs
cast up, 64-bit mode on): ``rel_err = max |K32 - K64| / max |K64|``.
"""

from __future__ import annotations

import argparse
import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import autontk  # noqa: E402
from bench import kernels  # noqa: E402

PRECISIONS = ("default", "highest")


def _cast(tree, dtype):
  return jax.tree.map(lambda v: jnp.asarray(v, dtype), tree)


def run(log=print) -> dict:
  rows = []
  for name, (f, params, x, _) in kernels.models(quick=True).items():
    p32, x32 = _cast(params, jnp.float32), _cast(x, jnp.float32)
    p64, x64 = _cast(params, jnp.float64), _cast(x, jnp.float64)
    for impl in kernels.EXPLICIT:
      ref = np.asarray(autontk.ntk_fn(f, implementation=impl, vmap_axes=0)(
          x64, None, p64))
      row = {"model": name, "method": impl}
      for precision in PRECISIONS:
        k = autontk.ntk_fn(f, implementation=impl, vmap_axes=0,
                           precision=precision)(x32, None, p32)
        assert k.dtype == jnp.float32
        row[precision] = float(np.abs(np.asarray(k, np.float64) - ref).max()
                               / np.abs(ref).max())
      rows.append(row)
      log(row)
  return {"rows": rows}


def markdown(res: dict) -> str:
  m = res["machine"]
  lines = [f"Relative error of float32 kernels against float64 "
           f"({m['backend']}, {m['device_kind']}; {res['date_utc']} UTC)", "",
           "| model | method | " + " | ".join(f"`{p}`" for p in PRECISIONS)
           + " |", "|---|---|" + "---|" * len(PRECISIONS)]
  for r in res["rows"]:
    lines.append(f"| {r['model']} | {r['method']} | "
                 + " | ".join(f"{r[p]:.2e}" for p in PRECISIONS) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m bench.precision",
                              description=__doc__)
  p.add_argument("--tag")
  args = p.parse_args(argv)
  print(kernels.record("precision", run(), markdown, args.tag))
  return 0


if __name__ == "__main__":
  sys.exit(main())
