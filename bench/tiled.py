"""``tiled``: ``autontk.ntk_tiled`` on the small CNN of the model zoo.

Three parts:

* ``throughput``: the traced N × N kernel (``x2=None``) at a fixed tile on
  1 to 4 simulated CPU devices, each device count in its own process
  (``XLA_FLAGS`` must be set before JAX starts), with XLA's default
  threading and with one thread per device; steady state (after a warm-up
  call), best of 3.
* ``extrapolation``: one tile's time and XLA's FLOPs and bytes on
  CIFAR-shaped inputs, fitted as ``a·t + b·t²`` over the tile sizes and
  extrapolated to the 50,000 × 50,000 kernel on this machine and on G GPUs
  (a roofline at a stated efficiency of spec-sheet fp32 peak and bandwidth,
  a launch overhead per tile, the kernel written at a stated rate per host).
* ``big_kernel``: a traced N × N kernel (20,000 in full mode) streamed to
  disk with ``tile="auto"`` under a memory budget for the whole process
  (each tile's program gets a quarter of it); wall time, peak resident
  memory, and a random sub-block checked against a single-shot ``ntk``.

The throughput processes run this module as a worker
(``python -m bench.tiled N TILE IMPLEMENTATION``).
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import jax
import numpy as np

import autontk
from autontk.tiled import storage
from bench.config import RunConfig
from bench.zoo import functions as zoo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GPUS = {  # fp32 FLOP/s (no tensor cores), HBM bytes/s
    "A100-SXM 40GB": (19.5e12, 1.555e12),
    "H100-SXM": (67e12, 3.35e12),
}
EFFICIENCY = 0.4
LAUNCH_S = 2e-3
WRITE_BYTES_PER_S_PER_HOST = 1e9
GPUS_PER_HOST = 8
CPU_TILE = 2048  # what tile="auto" picks here for the 20k run
GPU_TILE = 4096  # J of 4096 examples × 10 logits × 898 params: 150 MB

def _n_params(params) -> int:
  return sum(int(v.size) for v in jax.tree.leaves(params))


def _peak_rss_bytes() -> int:
  """Peak resident memory of this process (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# Throughput ----------------------------------------------------------------------


def _worker(n: int, tile: int, implementation: str, repeats: int = 3) -> dict:
  """One device count's steady-state time (in a process of its own)."""
  f, params = zoo.tiled_cnn()
  x = zoo.tiled_data(n)
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
          "tiles_per_s": tiles / seconds, "entries_per_s": n * n / seconds,
          "plan": plan.describe(), "finite": bool(np.isfinite(k).all())}


def throughput(n: int, tile: int, devices: list[int], one_thread: bool,
               implementation: str = "auto", log=print) -> dict[str, Any]:
  """Each device count in a fresh process; speed-up against the first."""
  rows = []
  for d in devices:
    flags = f"--xla_force_host_platform_device_count={d}"
    if one_thread:
      flags += (" --xla_cpu_multi_thread_eigen=false"
                " intra_op_parallelism_threads=1")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-m", "bench.tiled", str(n), str(tile),
         implementation], cwd=ROOT, env=env, capture_output=True, text=True,
        check=True)
    line = [s for s in out.stdout.splitlines() if s.startswith("RESULT ")][-1]
    rows.append(json.loads(line[len("RESULT "):]))
    log(f"  {d} device(s): {rows[-1]['seconds']:.2f} s, "
        f"{rows[-1]['tiles_per_s']:.2f} tiles/s  [{rows[-1]['plan']}]")
  for row in rows:
    row["speedup"] = rows[0]["seconds"] / row["seconds"]
  return {"rows": rows, "one_thread_per_device": one_thread}


# Extrapolation -------------------------------------------------------------------


def measure(trace_axes, tile: int, implementation: str, width: int,
            image: int = 32, repeats: int = 5):
  f, params = zoo.tiled_cnn(image=image, width=width)
  x = zoo.tiled_data(2 * tile, image=image)
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
          "params": _n_params(params)}


def fit(runs: list[dict], key: str):
  """Least-squares ``y(t) = a·t + b·t²``: per-example Jacobian work grows
  with the tile's side, the contraction with its area."""
  t = np.array([r["tile"] for r in runs], float)
  y = np.array([r[key] for r in runs], float)
  (a, b), *_ = np.linalg.lstsq(np.stack([t, t * t], 1), y, rcond=None)
  return lambda s: float(a * s + b * s * s)


def extrapolate(runs: list[dict], n: int) -> dict:
  flops, nbytes = fit(runs, "flops"), fit(runs, "bytes")
  # Timings on a shared machine are noisy; the best FLOP rate observed is a
  # steadier basis than a fit of seconds.
  rate = max(r["flops"] / r["seconds"] for r in runs)

  def seconds(t):
    return flops(t) / rate

  out_bytes = runs[-1]["out_bytes_per_entry"] * n * n

  def n_tiles(t):
    r = math.ceil(n / t)
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


def extrapolation(n: int, tiles: list[int], width: int, image: int,
                  implementation: str = "auto", log=print) -> dict[str, Any]:
  """Per-tile costs of the traced and the full 10×10 kernel, extrapolated."""
  result: dict[str, Any] = {
      "n": n, "model": f"CNN (conv{width}-conv{width}/2-gap-dense10) on "
      f"{image}x{image}x3", "assumptions": {
          "gpu_fp32_flops_and_bandwidth": GPUS, "efficiency": EFFICIENCY,
          "launch_s": LAUNCH_S,
          "write_bytes_per_s_per_host": WRITE_BYTES_PER_S_PER_HOST,
          "gpus_per_host": GPUS_PER_HOST}, "kernels": {}}
  for label, trace in (("traced", (-1,)), ("full_10x10", ())):
    runs = [measure(trace, t, implementation, width, image) for t in tiles]
    for m in runs:
      m["flops_per_entry"] = m["flops"] / m["tile"] ** 2
    result["kernels"][label] = {"measured": runs,
                                "extrapolated": extrapolate(runs, n)}
    log(f"  extrapolation {label} w{width} i{image}: "
        f"{result['kernels'][label]['extrapolated']['this_machine']['hours']:.2g}"
        " h here")
  return result


# Big kernel ----------------------------------------------------------------------


def big_kernel(n: int, budget_gib: float, check: int = 256,
               implementation: str = "auto") -> dict[str, Any]:
  """A traced ``n × n`` kernel streamed to a scratch folder, checked."""
  out = tempfile.mkdtemp(prefix="autontk-tiled-")
  try:
    return _big_kernel(n, budget_gib, check, implementation, out)
  finally:
    shutil.rmtree(out, ignore_errors=True)


def _big_kernel(n, budget_gib, check, implementation, out) -> dict[str, Any]:
  budget = int(budget_gib * 2**30)
  f, params = zoo.tiled_cnn()
  x = np.asarray(zoo.tiled_data(n))
  ntk = autontk.ntk_fn(f, vmap_axes=0, implementation=implementation)
  start_rss = _peak_rss_bytes()
  t0 = time.perf_counter()
  k = autontk.ntk_tiled(ntk, x, None, params, tile="auto", out=out,
                        memory_budget=budget // 4, progress=False)
  seconds = time.perf_counter() - t0
  peak = _peak_rss_bytes()
  with open(os.path.join(out, storage.META)) as fh:
    t = json.load(fh)["grid"]["t1"]
  r = -(-n // t)
  tiles = r * (r + 1) // 2
  rng = np.random.default_rng(0)
  i = np.sort(rng.choice(n, check, replace=False))
  j = np.sort(rng.choice(n, check, replace=False))
  want = np.asarray(ntk(x[i], x[j], params))
  got = np.asarray(k[np.ix_(i, j)])
  return {
      "n": n, "kernel_shape": list(k.shape), "dtype": str(k.dtype),
      "kernel_bytes": int(k.nbytes), "memory_budget_bytes": budget,
      "tile_program_budget_bytes": budget // 4, "tile": t, "tiles": tiles,
      "tiles_resumed": 0, "seconds": seconds,
      "seconds_per_tile": seconds / max(tiles, 1),
      "peak_rss_bytes": peak, "rss_before_bytes": start_rss,
      "within_budget": peak <= budget,
      "plan": ntk.plan(x[:t], x[:t], params).describe(),
      "params": _n_params(params), "devices": jax.device_count(),
      "check_block": check,
      "check_max_rel_err": float(np.max(np.abs(got - want)) /
                                 np.max(np.abs(want))),
      "check_symmetry_max_abs": float(np.max(np.abs(
          got - np.asarray(k[np.ix_(j, i)]).T)))}


# The suite -----------------------------------------------------------------------


def run(cfg: RunConfig, log=print) -> dict[str, Any]:
  """All three parts (smaller sizes in quick mode); ``--cases`` picks parts
  by name (``throughput``, ``extrapolation``, ``big_kernel``)."""
  q = cfg.quick
  res: dict[str, Any] = {"throughput": [], "extrapolation": [],
                         "big_kernel": []}
  big_n = 2000 if q else 20_000
  if cfg.selected("throughput"):
    n, devices = (768, [1, 2]) if q else (1536, [1, 2, 3, 4])
    for one_thread in (False, True):
      res["throughput"].append(throughput(n, 96, devices, one_thread, log=log))
      cfg.save_partial(res)
  if cfg.selected("extrapolation"):
    tiles = [16, 32, 64] if q else [32, 64, 128]
    for n, image in ((50_000, 32), (big_n, 8)):
      res["extrapolation"].append(extrapolation(n, tiles, 8, image, log=log))
      cfg.save_partial(res)
  if cfg.selected("big_kernel"):
    res["big_kernel"].append(big_kernel(big_n, 1.5 if q else 2.0))
    log(f"  big kernel {big_n}: {res['big_kernel'][-1]['seconds']:.1f} s")
  return res


# Report --------------------------------------------------------------------------


SHOWN_GPUS = ("1", "8", "64")


def _dur(hours):
  s = hours * 3600
  if s < 10:
    return f"{s:.2g} s"
  return f"{s:.0f} s" if s < 120 else f"{s / 60:.3g} min" if s < 7200 else (
      f"{hours:.3g} h")


def _gib(b):
  return f"{b / 2**30:.2f} GiB"


def _where(r: dict) -> str:
  m = r.get("machine")
  return (f" Machine: {m['cpu']}, {m['cores']} cores; {r['date']}."
          if m else "")


def _big_kernel_md(lines: list[str], runs: list[dict]) -> None:
  for r in runs:
    lines += [
        f"### {r['n']:,} × {r['n']:,} traced NTK of the small CNN "
        f"({r['params']} parameters, 8×8×3 inputs)", "",
        (_where(r) or "On the machine above.").strip(), "",
        "| quantity | value |", "|---|---|",
        f"| kernel | {r['kernel_shape']} {r['dtype']}, "
        f"{r['kernel_bytes'] / 1e9:.2f} GB on disk |",
        f"| memory budget (whole process) | {_gib(r['memory_budget_bytes'])}"
        f" (tile programs: {_gib(r['tile_program_budget_bytes'])}) |",
        f"| peak resident memory | {_gib(r['peak_rss_bytes'])} "
        f"({'within' if r['within_budget'] else 'OVER'} budget; "
        f"{_gib(r['rss_before_bytes'])} before the call) |",
        f"| tile (auto) | {r['tile']} → {r['tiles']} tiles "
        f"(upper triangle), {r['devices']} device(s) |",
        f"| plan per tile | {r['plan']} |",
        f"| wall time | {r['seconds']:.1f} s "
        f"({r['seconds_per_tile']:.2f} s per tile, incl. planning, "
        f"tile search and compiles) |",
        f"| check: random {r['check_block']}×{r['check_block']} block vs "
        f"single-shot `ntk` | max relative error "
        f"{r['check_max_rel_err']:.1e}; mirror symmetry error "
        f"{r['check_symmetry_max_abs']:.1e} |", ""]


def _throughput_md(lines: list[str], runs: list[dict]) -> None:
  for r in runs:
    _one_throughput_md(lines, r)


def _one_throughput_md(lines: list[str], r: dict) -> None:
  row0 = r["rows"][0]
  how = (", one thread per device (XLA intra-op threads off)"
         if r.get("one_thread_per_device") else ", XLA's default threading")
  lines += [f"### Throughput, 1 to {len(r['rows'])} simulated CPU devices"
            f"{how}", "",
            f"Traced NTK of the small CNN, N = {row0['n']}, x2 = None, tile "
            f"{row0['tile']} ({row0['tiles']} tiles), steady state (after a "
            f"warm-up call).{_where(r)}", "",
            "| devices | seconds | tiles/s | kernel entries/s | speed-up "
            "| plan |",
            "|---|---|---|---|---|---|"]
  for row in r["rows"]:
    lines.append(f"| {row['devices']} | {row['seconds']:.2f} | "
                 f"{row['tiles_per_s']:.1f} | {row['entries_per_s']:.3g} | "
                 f"{row['speedup']:.2f}× | {row['plan']} |")
  lines.append("")


def _extrapolation_md(lines: list[str], runs: list[dict]) -> None:
  for r in runs:
    a = r["assumptions"]
    measured = next(iter(r["kernels"].values()))["measured"]
    lines += [f"### Extrapolation: {r['n']:,} × {r['n']:,} kernel of the "
              f"{r['model']}", "",
              f"Per-tile cost measured (tiles "
              f"{', '.join(str(m['tile']) for m in measured)}"
              f"), fitted as a·t + b·t². GPU estimate: roofline at "
              f"{a['efficiency']:.0%} of fp32 peak and of HBM bandwidth, "
              f"{a['launch_s'] * 1e3:.0f} ms per tile, output written at "
              f"{a['write_bytes_per_s_per_host'] / 1e9:.0f} GB/s per host of "
              f"{a['gpus_per_host']} GPUs.", "",
              "Cells: compute time / write time; the run takes about the "
              "larger of the two (writing overlaps computing).", ""]
    first = next(iter(r["kernels"].values()))["extrapolated"]["gpus"]
    cols = [k for k in first if k.rsplit("x", 1)[1] in SHOWN_GPUS]
    lines += ["| kernel | size | this machine | GPU tile FLOPs | "
              + " | ".join(cols) + " |",
              "|---|---|---|---|" + "---|" * len(cols)]
    for label, k in r["kernels"].items():
      ex = k["extrapolated"]
      here = ex["this_machine"]
      cells = [f"{_dur(ex['gpus'][c]['compute_h'])} / "
               f"{_dur(ex['gpus'][c]['write_h'])}" for c in cols]
      lines.append(
          f"| {label} | {ex['kernel_bytes'] / 1e9:.0f} GB | "
          f"{_dur(here['hours'])} ({here['tiles']} tiles of {here['tile']}) | "
          f"{ex['gpu_tile_flops']:.2g} ({ex['gpu_tiles']} tiles of "
          f"{ex['gpu_tile']}) | " + " | ".join(cells) + " |")
    lines.append("")


def _validation_md(lines: list[str], res: dict) -> None:
  """The extrapolation's method against a measured big kernel of its size."""
  big = {r["n"]: r for r in res.get("big_kernel", [])}
  ex = next((r for r in res.get("extrapolation", [])
             if r["n"] in big and "8x8x3" in r["model"]), None)
  if ex is None:
    return
  big = big[ex["n"]]
  here = ex["kernels"]["traced"]["extrapolated"]["this_machine"]
  lines += ["### Check of the extrapolation against the measured kernel", "",
            f"The same fit on 8×8 inputs predicts {here['per_tile_s']:.2f} s "
            f"per {here['tile']}-tile and {here['hours'] * 3600:.0f} s of "
            f"computing for the {ex['n']:,} × {ex['n']:,} traced kernel; the "
            f"big kernel measured "
            f"{big['seconds_per_tile']:.2f} s per tile and "
            f"{big['seconds']:.0f} s in all, including planning, the tile "
            "search and compiles.", ""]


def markdown(res: dict[str, Any]) -> str:
  lines: list[str] = []
  _big_kernel_md(lines, res.get("big_kernel", []))
  _throughput_md(lines, res.get("throughput", []))
  _extrapolation_md(lines, res.get("extrapolation", []))
  _validation_md(lines, res)
  return "\n".join(lines)


if __name__ == "__main__":
  print("RESULT " + json.dumps(_worker(int(sys.argv[1]), int(sys.argv[2]),
                                       sys.argv[3])))
