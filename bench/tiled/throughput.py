"""Throughput of ntk_tiled on 1 to 4 simulated CPU devices.

Each device count runs in its own process (``XLA_FLAGS`` must be set before
JAX starts). The traced NTK (N × N, trace over the 10 logits) of the small
CNN is computed with ``x2=None`` at a fixed tile; a warm-up call compiles the
tile programs first, so the timed calls (best of 3) measure steady-state
tiles/s.

    python -m bench.tiled.throughput [--n 1536] [--tile 96] [--devices 1 2 3 4]

Writes ``bench/tiled/results/throughput.json`` (with
``--one-thread-per-device``: ``throughput_one_thread.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def worker(n: int, tile: int, implementation: str, repeats: int = 3) -> dict:
  import jax
  import numpy as np

  import autontk
  from bench.tiled import cnn

  f, params = cnn.model()
  x = cnn.data(n)
  ntk = autontk.ntk_fn(f, vmap_axes=0, implementation=implementation)
  t0 = time.perf_counter()
  autontk.ntk_tiled(ntk, x[:2 * tile], None, params, tile=tile,
                    progress=False)  # compiles both tile programs
  warm = time.perf_counter() - t0
  times = []
  for _ in range(repeats):  # the best of a few: the machine is shared
    t0 = time.perf_counter()
    k = autontk.ntk_tiled(ntk, x, None, params, tile=tile, progress=False)
    times.append(time.perf_counter() - t0)
  seconds = min(times)
  r = -(-n // tile)
  tiles = r * (r + 1) // 2
  plan = ntk.plan(x[:tile], x[:tile], params)
  return {"devices": jax.device_count(), "n": n, "tile": tile,
          "tiles": tiles, "seconds": seconds, "warmup_seconds": warm,
          "tiles_per_s": tiles / seconds,
          "entries_per_s": n * n / seconds,
          "plan": plan.describe(), "finite": bool(np.isfinite(k).all())}


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--n", type=int, default=1536)
  ap.add_argument("--tile", type=int, default=96)
  ap.add_argument("--devices", type=int, nargs="+", default=[1, 2, 3, 4])
  ap.add_argument("--implementation", default="auto")
  ap.add_argument("--one-thread-per-device", action="store_true",
                  help="turn off XLA's intra-op threads, so each simulated "
                       "device runs on one core (shows the parallelism of "
                       "the multi-device path on a small machine)")
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.worker:
    print("RESULT " + json.dumps(worker(args.n, args.tile,
                                        args.implementation)))
    return
  from bench.tiled import cnn
  rows = []
  for d in args.devices:
    flags = f"--xla_force_host_platform_device_count={d}"
    if args.one_thread_per_device:
      flags += (" --xla_cpu_multi_thread_eigen=false"
                " intra_op_parallelism_threads=1")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-m", "bench.tiled.throughput", "--worker",
         "--n", str(args.n), "--tile", str(args.tile),
         "--implementation", args.implementation],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    line = [s for s in out.stdout.splitlines() if s.startswith("RESULT ")][-1]
    row = json.loads(line[len("RESULT "):])
    rows.append(row)
    print(f"{d} device(s): {row['seconds']:.2f} s, "
          f"{row['tiles_per_s']:.2f} tiles/s, "
          f"{row['entries_per_s']:.3g} entries/s  [{row['plan']}]",
          flush=True)
  base = rows[0]["seconds"]
  for row in rows:
    row["speedup"] = base / row["seconds"]
  result = {"machine": cnn.machine(), "date": time.strftime(
      "%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows,
            "one_thread_per_device": args.one_thread_per_device}
  os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
  name = ("throughput_one_thread.json" if args.one_thread_per_device else
          "throughput.json")
  with open(os.path.join(HERE, "results", name), "w") as fh:
    json.dump(result, fh, indent=1)


if __name__ == "__main__":
  main()
