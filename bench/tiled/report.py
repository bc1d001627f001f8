"""Renders ``results/*.json`` into the tables of ``README.md``.

    python -m bench.tiled.report

Replaces the text between ``<!-- results:begin -->`` and
``<!-- results:end -->`` in this folder's README.
"""

from __future__ import annotations

import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _load(name):
  path = os.path.join(HERE, "results", name)
  if not os.path.exists(path):
    return None
  with open(path) as fh:
    return json.load(fh)


SHOWN_GPUS = ("1", "8", "64")


def _dur(hours):
  s = hours * 3600
  if s < 10:
    return f"{s:.2g} s"
  return f"{s:.0f} s" if s < 120 else f"{s / 60:.3g} min" if s < 7200 else (
      f"{hours:.3g} h")


def _gib(b):
  return f"{b / 2**30:.2f} GiB"


def big_kernel(lines):
  for path in sorted(glob.glob(os.path.join(HERE, "results",
                                            "big_kernel_*.json"))):
    r = _load(os.path.basename(path))
    m = r["machine"]
    lines += [
        f"### {r['n']:,} × {r['n']:,} traced NTK of the small CNN "
        f"({r['params']} parameters, 8×8×3 inputs)", "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"shared with other jobs; jax {m['jax']}; {r['date']}.", "",
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


def throughput(lines):
  for name in ("throughput.json", "throughput_one_thread.json"):
    _throughput(lines, name)


def _throughput(lines, name):
  r = _load(name)
  if r is None:
    return
  m = r["machine"]
  row0 = r["rows"][0]
  how = (", one thread per device (XLA intra-op threads off)"
         if r.get("one_thread_per_device") else ", XLA's default threading")
  lines += [f"### Throughput, 1 to {len(r['rows'])} simulated CPU devices"
            f"{how}", "",
            f"Traced NTK of the small CNN, N = {row0['n']}, x2 = None, tile "
            f"{row0['tile']} ({row0['tiles']} tiles), steady state (after a "
            f"warm-up call). Machine: {m['cpu']}, {m['cores']} cores; "
            f"{r['date']}.", "",
            "| devices | seconds | tiles/s | kernel entries/s | speed-up "
            "| plan |",
            "|---|---|---|---|---|---|"]
  for row in r["rows"]:
    lines.append(f"| {row['devices']} | {row['seconds']:.2f} | "
                 f"{row['tiles_per_s']:.1f} | {row['entries_per_s']:.3g} | "
                 f"{row['speedup']:.2f}× | {row['plan']} |")
  lines.append("")


def extrapolation(lines):
  for path in sorted(glob.glob(os.path.join(HERE, "results",
                                            "extrapolation_*.json"))):
    r = _load(os.path.basename(path))
    a = r["assumptions"]
    measured = next(iter(r["kernels"].values()))["measured"]
    lines += [f"### Extrapolation: {r['n']:,} × {r['n']:,} kernel of the "
              f"{r['model']}", "",
              f"Per-tile cost measured {r['date']} (tiles "
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


def validation(lines):
  """The extrapolation's method against the measured 20k run."""
  ex = _load("extrapolation_w8_i8_n20000.json")
  big = _load("big_kernel_20000.json")
  if ex is None or big is None:
    return
  here = ex["kernels"]["traced"]["extrapolated"]["this_machine"]
  lines += ["### Check of the extrapolation against the measured 20k run", "",
            f"The same fit on 8×8 inputs predicts {here['per_tile_s']:.2f} s "
            f"per 2048-tile and {here['hours'] * 3600:.0f} s of computing for "
            f"the 20,000 × 20,000 traced kernel; `big_kernel` measured "
            f"{big['seconds_per_tile']:.2f} s per tile and "
            f"{big['seconds']:.0f} s in all, including planning, the tile "
            "search and compiles.", ""]


def main() -> None:
  lines = [BEGIN, ""]
  big_kernel(lines)
  throughput(lines)
  extrapolation(lines)
  validation(lines)
  lines.append(END)
  path = os.path.join(HERE, "README.md")
  text = open(path).read() if os.path.exists(path) else BEGIN + "\n" + END
  head, rest = text.split(BEGIN, 1)
  tail = rest.split(END, 1)[1]
  with open(path, "w") as fh:
    fh.write(head + "\n".join(lines) + tail)


if __name__ == "__main__":
  main()
