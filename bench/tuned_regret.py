"""Regret of ``implementation="auto"`` with tuning, on the bundled suite.

For each model of ``autontk.suite``: ``ntk_fn(f, tune=...)`` tunes on first
use (in a fresh cache directory), then auto's plan and every explicit method
are re-timed side by side (interleaved rounds; the best median counts).
regret = time(auto's plan) / time(best explicit method); the target with
tuning is a geometric mean <= 1.03 and a worst case <= 1.15
(docs/performance.md).

Run: ``python -m bench.tuned_regret [--budget 60] [MODEL ...]``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("models", nargs="*")
  parser.add_argument("--budget", type=float, default=60.0)
  args = parser.parse_args(argv)
  os.environ["AUTONTK_CACHE_DIR"] = tempfile.mkdtemp(prefix="autontk-regret-")
  os.environ.setdefault("AUTONTK_JAX_CACHE", "0")

  import autontk
  from autontk import Plan, suite
  from autontk.auto import tuner
  from autontk.auto.tuner import TuneOptions

  names = args.models or list(suite.SUITE)
  regrets = []
  for name in names:
    m = suite.SUITE[name]()
    ntk = autontk.ntk_fn(
        m["f"], trace_axes=m.get("trace_axes", (-1,)),
        diagonal_axes=m.get("diagonal_axes", ()),
        vmap_axes=m.get("vmap_axes"),
        tune=TuneOptions(budget_s=args.budget, progress=False))
    x1, x2, params = m["x1"], m.get("x2"), m["params"]
    t0 = time.perf_counter()
    plan = ntk.plan(x1, x2, params)
    tune_s = time.perf_counter() - t0
    plans = {"auto": plan}
    plans.update({i.name.lower(): Plan(i)
                  for i in autontk.methods.available()})
    best = tuner.confirm(ntk, list(dict.fromkeys(plans.values())), x1, x2,
                         params, {}, TuneOptions(min_time_s=0.2,
                                                 min_repeats=5))
    explicit = min(best[p] for k, p in plans.items() if k != "auto")
    regret = best[plan] / explicit
    regrets.append(regret)
    print(f"{name:<18} {plan.describe()[:48]:<48} tune {tune_s:6.1f} s  "
          f"auto {best[plan] * 1e3:8.3f} ms  best explicit "
          f"{explicit * 1e3:8.3f} ms  regret {regret:.3f}", flush=True)
  geo = math.exp(statistics.mean(math.log(r) for r in regrets))
  print(f"geomean regret {geo:.3f}, worst {max(regrets):.3f} "
        f"({os.environ['AUTONTK_CACHE_DIR']})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
