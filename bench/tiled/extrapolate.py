"""Paper-style extrapolation: the CIFAR-10 NTK on a multi-GPU cluster.

Measures one tile of the small CNN on CIFAR-shaped inputs (32 × 32 × 3,
random values: the cost does not depend on them) on this machine: steady
state time, and FLOPs and bytes from XLA's cost analysis of the tile's
compiled program, for the traced kernel (trace over the 10 logits) and for
the full kernel with 10 × 10 output blocks. From these per-tile costs it
extrapolates the 50,000 × 50,000 kernel (upper triangle of tiles when
x2 = x1):

FLOPs, bytes and seconds per tile are fitted as ``a·t + b·t²`` over the
measured tile sizes (Jacobians grow with the tile's side, the contraction
with its area) and evaluated at the tile each target would use:

* on this machine: tiles of 2048 × measured-and-fitted seconds per tile;
* on G GPUs: tiles of 4096 run independently (one per device per step), so
  ceil(tiles / G) steps, each costing a roofline estimate of one tile,
  max(FLOPs / (efficiency × peak FLOP/s), bytes / (efficiency × bandwidth))
  plus a launch overhead, plus writing the kernel at a stated rate per host.

The GPU constants are public spec-sheet numbers (fp32 without tensor cores);
the efficiency is an assumption, stated in the output.

    python -m bench.tiled.extrapolate [--tiles 32 64 128] [--width 8]

Writes ``bench/tiled/results/extrapolation_w<width>.json`` (other
``--image``/``--n``: ``extrapolation_w<width>_i<image>_n<n>.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))

GPUS = {  # fp32 FLOP/s (no tensor cores), HBM bytes/s
    "A100-SXM 40GB": (19.5e12, 1.555e12),
    "H100-SXM": (67e12, 3.35e12),
}
EFFICIENCY = 0.4
LAUNCH_S = 2e-3
WRITE_BYTES_PER_S_PER_HOST = 1e9
GPUS_PER_HOST = 8
N = 50_000  # CIFAR-10's training set; --n changes it
CPU_TILE = 2048  # what tile="auto" picks here for the 20k run
GPU_TILE = 4096  # J of 4096 examples × 10 logits × 898 params: 150 MB


def measure(trace_axes, tile: int, implementation: str, width: int,
            image: int = 32, repeats: int = 5):
  import jax
  import numpy as np

  import autontk
  from bench.tiled import cnn

  f, params = cnn.model(image=image, width=width)
  x = cnn.data(2 * tile, image=image)
  x1, x2 = x[:tile], x[tile:]
  ntk = autontk.ntk_fn(f, vmap_axes=0, trace_axes=trace_axes,
                       implementation=implementation)
  plan = ntk.plan(x1, x2, params)

  def one_tile(params, x1, x2):
    return ntk.execute(plan, x1, x2, params)

  compiled = jax.jit(one_tile).lower(params, x1, x2).compile()
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  times = []
  jax.block_until_ready(compiled(params, x1, x2))
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(params, x1, x2))
    times.append(time.perf_counter() - t0)
  return {"tile": tile, "plan": plan.describe(),
          "seconds": min(times),
          "flops": float(cost.get("flops", -1)),
          "bytes": float(cost.get("bytes accessed", -1)),
          "out_bytes_per_entry": int(np.asarray(out).nbytes) / tile ** 2,
          "params": cnn.n_params(params)}


def fit(runs: list[dict], key: str):
  """Least-squares ``y(t) = a·t + b·t²``: per-example Jacobian work grows
  with the tile's side, the contraction with its area."""
  import numpy as np
  t = np.array([r["tile"] for r in runs], float)
  y = np.array([r[key] for r in runs], float)
  (a, b), *_ = np.linalg.lstsq(np.stack([t, t * t], 1), y, rcond=None)
  return lambda s: float(a * s + b * s * s)


def extrapolate(runs: list[dict]) -> dict:
  flops, nbytes = fit(runs, "flops"), fit(runs, "bytes")
  # Timings on a shared machine are noisy; the best FLOP rate observed is a
  # steadier basis than a fit of seconds.
  rate = max(r["flops"] / r["seconds"] for r in runs)

  def seconds(t):
    return flops(t) / rate

  out_bytes = runs[-1]["out_bytes_per_entry"] * N * N

  def n_tiles(t):
    r = math.ceil(N / t)
    return r * (r + 1) // 2

  rows = {"kernel_bytes": out_bytes,
          "this_machine": {"tile": CPU_TILE, "tiles": n_tiles(CPU_TILE),
                           "flops_per_s": rate,
                           "per_tile_s": seconds(CPU_TILE),
                           "hours": n_tiles(CPU_TILE) * seconds(CPU_TILE)
                                    / 3600},
          "gpu_tile": GPU_TILE, "gpu_tiles": n_tiles(GPU_TILE),
          "gpu_tile_flops": flops(GPU_TILE), "gpu_tile_bytes": nbytes(GPU_TILE),
          "gpus": {}}
  for name, (peak, bw) in GPUS.items():
    per_tile = max(flops(GPU_TILE) / (EFFICIENCY * peak),
                   nbytes(GPU_TILE) / (EFFICIENCY * bw)) + LAUNCH_S
    for g in (1, 8, 64, 512):
      hosts = max(1, g // GPUS_PER_HOST)
      compute = math.ceil(n_tiles(GPU_TILE) / g) * per_tile
      write = out_bytes / (hosts * WRITE_BYTES_PER_S_PER_HOST)
      rows["gpus"][f"{name} x{g}"] = {
          "per_tile_s": per_tile, "compute_h": compute / 3600,
          "write_h": write / 3600, "total_h": max(compute, write) / 3600}
  return rows


def main(argv=None) -> None:
  global N
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--tiles", type=int, nargs="+", default=[32, 64, 128])
  ap.add_argument("--implementation", default="auto")
  ap.add_argument("--width", type=int, default=8,
                  help="channels of both convolutions (8: the small CNN)")
  ap.add_argument("--image", type=int, default=32,
                  help="image side (32: CIFAR; 8 with --n 20000 checks the "
                       "method against big_kernel.py's measured run)")
  ap.add_argument("--n", type=int, default=N)
  args = ap.parse_args(argv)
  N = args.n
  from bench.tiled import cnn
  w = args.width
  im = args.image
  result = {"n": N, "model": f"CNN (conv{w}-conv{w}/2-gap-dense10) on "
            f"{im}x{im}x3", "assumptions": {
                "gpu_fp32_flops_and_bandwidth": GPUS,
                "efficiency": EFFICIENCY, "launch_s": LAUNCH_S,
                "write_bytes_per_s_per_host": WRITE_BYTES_PER_S_PER_HOST,
                "gpus_per_host": GPUS_PER_HOST},
            "machine": cnn.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "kernels": {}}
  for label, trace in (("traced", (-1,)), ("full_10x10", ())):
    runs = [measure(trace, t, args.implementation, w, im)
            for t in args.tiles]
    for m in runs:
      m["flops_per_entry"] = m["flops"] / m["tile"] ** 2
      print(f"{label} tile {m['tile']}: {m['seconds']:.3f} s, "
            f"{m['flops']:.3g} FLOPs, {m['flops_per_entry']:.3g} FLOPs/entry "
            f"[{m['plan']}]", flush=True)
    result["kernels"][label] = {"measured": runs,
                                "extrapolated": extrapolate(runs)}
    ex = result["kernels"][label]["extrapolated"]
    here = ex["this_machine"]
    print(f"  N={N} {label}: {ex['kernel_bytes'] / 1e9:.1f} GB; here "
          f"{here['tiles']} tiles of {here['tile']}, {here['hours']:.1f} h; "
          f"GPU: {ex['gpu_tiles']} tiles of {GPU_TILE}, "
          f"{ex['gpu_tile_flops']:.3g} FLOPs each", flush=True)
    for k, v in ex["gpus"].items():
      print(f"    {k}: {v['total_h']:.3g} h (per tile {v['per_tile_s']:.3g} s)")
  os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
  name = f"extrapolation_w{w}.json"
  if (im, N) != (32, 50_000):
    name = f"extrapolation_w{w}_i{im}_n{N}.json"
  with open(os.path.join(HERE, "results", name), "w") as fh:
    json.dump(result, fh, indent=1)


if __name__ == "__main__":
  main()
