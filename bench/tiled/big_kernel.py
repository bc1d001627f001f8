"""A 20,000 × 20,000 traced NTK of the small CNN, streamed to disk.

Runs ``ntk_tiled`` with ``tile="auto"`` under a stated memory budget for the
whole process (default 2 GiB): each tile's compiled program gets a quarter
of it, the rest covers the JAX runtime, the inputs and the tiles in flight.
Records the wall time, the peak resident memory (``ru_maxrss``), the chosen
tile and plan, and checks a random 256 × 256 sub-block against a
single-shot ``ntk`` call.

    nice python -m bench.tiled.big_kernel [--n 20000] [--budget-gib 2]
        [--out /tmp/autontk_tiled_20k] [--resume]

Writes ``bench/tiled/results/big_kernel_<n>.json``. The kernel itself
(1.6 GB for N = 20,000) stays in ``--out``, outside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--n", type=int, default=20000)
  ap.add_argument("--budget-gib", type=float, default=2.0)
  ap.add_argument("--out", default="/tmp/autontk_tiled_20k")
  ap.add_argument("--implementation", default="auto")
  ap.add_argument("--resume", action="store_true",
                  help="continue an interrupted run instead of starting over")
  ap.add_argument("--check", type=int, default=256)
  args = ap.parse_args(argv)

  import jax
  import numpy as np

  import autontk
  from autontk.tiled import storage
  from bench.tiled import cnn

  budget = int(args.budget_gib * 2**30)
  f, params = cnn.model()
  x = np.asarray(cnn.data(args.n))
  ntk = autontk.ntk_fn(f, vmap_axes=0, implementation=args.implementation)
  start_rss = cnn.peak_rss_bytes()
  before = len(storage.DiskStore(args.out, []).done()) if args.resume else 0
  t0 = time.perf_counter()
  k = autontk.ntk_tiled(ntk, x, None, params, tile="auto", out=args.out,
                        resume=args.resume, memory_budget=budget // 4)
  seconds = time.perf_counter() - t0
  peak = cnn.peak_rss_bytes()
  with open(os.path.join(args.out, storage.META)) as fh:
    grid = json.load(fh)["grid"]
  t = grid["t1"]
  r = -(-args.n // t)
  tiles = r * (r + 1) // 2

  rng = np.random.default_rng(0)
  i = np.sort(rng.choice(args.n, args.check, replace=False))
  j = np.sort(rng.choice(args.n, args.check, replace=False))
  want = np.asarray(ntk(x[i], x[j], params))
  got = np.asarray(k[np.ix_(i, j)])
  rel = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
  sym = float(np.max(np.abs(np.asarray(k[np.ix_(i, j)]) -
                            np.asarray(k[np.ix_(j, i)]).T)))

  result = {
      "n": args.n, "kernel_shape": list(k.shape), "dtype": str(k.dtype),
      "kernel_bytes": int(k.nbytes), "memory_budget_bytes": budget,
      "tile_program_budget_bytes": budget // 4, "tile": t, "tiles": tiles,
      "tiles_resumed": before, "seconds": seconds,
      "seconds_per_tile": seconds / max(tiles - before, 1),
      "peak_rss_bytes": peak, "rss_before_bytes": start_rss,
      "within_budget": peak <= budget,
      "plan": ntk.plan(x[:t], x[:t], params).describe(),
      "params": cnn.n_params(params), "devices": jax.device_count(),
      "check_block": args.check, "check_max_rel_err": rel,
      "check_symmetry_max_abs": sym, "machine": cnn.machine(),
      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
  }
  print(json.dumps(result, indent=1))
  os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
  with open(os.path.join(HERE, "results", f"big_kernel_{args.n}.json"),
            "w") as fh:
    json.dump(result, fh, indent=1)


if __name__ == "__main__":
  main()
