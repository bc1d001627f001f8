"""neural-tangents 0.6.5 peer: methods 1, 2, 3 on the bench's cases.

Runs inside ``.venv-bench-nt`` (jax 0.4.23 + neural-tangents 0.6.5, created by
:mod:`bench.peers.envs`), never in autontk's environment:

  .venv-bench-nt/bin/python -m bench.peers.nt_runner JOB.json

``JOB.json`` holds ``{"cases": [...], "dir": ..., "policy": {...},
"implementations": [1, 2, 3], "budget_bytes": ...}``; each case's parameters
and inputs come from ``<dir>/<case>.npz``. Writes ``<dir>/nt_results.json``
(records per case and method) and ``<dir>/nt_<case>.npz`` (the kernels, so
the orchestrator checks every peer computed the same kernel). NT's AUTO rule
(fewest compiled FLOPs) is applied by the orchestrator to these records.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import numpy as np

from bench import cases as cases_mod
from bench import measure
from bench.zoo import specs


def main(job_path: str) -> None:
  import jax
  import jax.numpy as jnp
  import neural_tangents as nt

  with open(job_path) as fh:
    job = json.load(fh)
  policy = measure.TimingPolicy(**job["policy"])
  impls = job.get("implementations", [1, 2, 3])
  budget = job.get("budget_bytes")
  work = job["dir"]
  results = {"versions": {"jax": jax.__version__,
                          "neural_tangents": nt.__version__,
                          "backend": jax.default_backend()},
             "cases": {}}
  f, p0, a0, b0 = specs.warm_up_inputs()  # untimed, as autontk's runner
  for impl in impls:
    try:
      ntk = nt.empirical_ntk_fn(f, trace_axes=(), vmap_axes=0,
                                implementation=impl)
      jax.block_until_ready(jax.jit(ntk)(a0, b0, p0))
    except Exception:  # noqa: BLE001 - a failing method shows in its case
      pass
  for cd in job["cases"]:
    case = cases_mod.Case.from_json(cd)
    params, x1, x2 = cases_mod.load_arrays(os.path.join(work,
                                                        case.name + ".npz"))
    params = {k: jnp.asarray(v) for k, v in params.items()}
    x1, x2 = jnp.asarray(x1), jnp.asarray(x2)
    f = specs.apply(case.spec)
    recs, kernels = {}, {}
    skip = job.get("skip", {}).get(case.name, [])
    for impl in impls:
      key = f"nt{impl}"
      try:
        ntk = nt.empirical_ntk_fn(f, trace_axes=case.trace_axes, vmap_axes=0,
                                  implementation=impl)
        rec = measure.measure_jit(lambda a, b, p: ntk(a, b, p),
                                 (x1, x2, params), policy, keep_result=True,
                                 budget_bytes=budget,
                                 # Skipped ones are still compiled: NT's
                                 # AUTO rule needs their FLOPs.
                                 max_run_flops=(1e-9 if key in skip else
                                                job.get("max_run_flops")))
        if "_result" in rec:
          kernels[key] = np.asarray(rec.pop("_result"), np.float64)
      except Exception as e:  # noqa: BLE001 - a failing method is a result
        rec = measure.error_record(e)
        traceback.print_exc()
      recs[key] = rec
      print(f"  NT {key} {case.name}: " + (
          f"{rec['median_s'] * 1e3:.2f} ms" if "median_s" in rec
          else str(rec.get("error") or "not run")), flush=True)
    results["cases"][case.name] = recs
    np.savez(os.path.join(work, f"nt_{case.name}.npz"), **kernels)
    # Written after every case: a crash later still leaves results.
    with open(os.path.join(work, "nt_results.json"), "w") as fh:
      json.dump(results, fh, indent=1)


if __name__ == "__main__":
  main(sys.argv[1])
