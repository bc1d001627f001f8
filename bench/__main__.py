"""``python -m bench [--quick] [--only SUITE ...] [--tag TAG]``.

Runs the suites (see :mod:`bench.suites`), writes
``bench/results/<tag>/<suite>.json`` and ``.csv``, PNG plots, and the tables
of ``bench/README.md`` (between its ``results`` markers). The peers'
environments (``bench/.venv-nt``, ``bench/.venv-torch``) are created on first
use. ``--report-only`` re-renders tables and plots from saved JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time


def machine_info() -> dict:
  import jax
  dev = jax.devices()[0]
  cpu = ""
  try:
    with open("/proc/cpuinfo") as fh:
      cpu = next((l.split(":", 1)[1].strip() for l in fh
                  if l.startswith("model name")), "")
  except OSError:
    pass
  mem = None
  try:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError):
    pass
  import autontk
  return {"backend": jax.default_backend(), "device_kind": dev.device_kind,
          "device_count": jax.device_count(), "cpu": cpu,
          "cpu_count": os.cpu_count(), "memory_bytes": mem,
          "python": platform.python_version(), "jax": jax.__version__,
          "autontk": autontk.__version__, "platform": platform.platform()}


def default_tag(info: dict) -> str:
  if info["backend"] == "cpu":
    return f"cpu-{info['cpu_count']}core"
  kind = "".join(c if c.isalnum() else "-" for c in info["device_kind"].lower())
  return f"{info['backend']}-{kind}".strip("-")


def main(argv=None) -> int:
  from bench import suites
  p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--quick", action="store_true",
                 help="small shapes, short timings (< 10 min on 2 cores)")
  p.add_argument("--only", nargs="+", choices=suites.SUITES,
                 help="run only these suites")
  p.add_argument("--tag", help="results folder name (default: from device)")
  p.add_argument("--peers", default="nt,torch,jax",
                 help="comma list of peers to run (nt, torch, jax) or 'none'")
  p.add_argument("--budget-mib", type=float, default=None,
                 help="memory budget of the memory suite and of its auto "
                      "plans (default 32 MiB quick, 8192 MiB full)")
  p.add_argument("--cases", help="regular expression: only matching cases")
  p.add_argument("--report-only", action="store_true",
                 help="re-render tables/plots/README from saved JSON")
  args = p.parse_args(argv)

  # A fresh plan cache, and no persistent JAX cache, so planning and
  # first-call times are cold (the plancache suite sets its own).
  os.environ.setdefault("AUTONTK_CACHE_DIR",
                        tempfile.mkdtemp(prefix="autontk-bench-"))
  os.environ.setdefault("AUTONTK_JAX_CACHE", "0")

  from bench import report
  info = machine_info()
  if not args.report_only:
    # The cost model's device constants are measured once per device and
    # stored in the cache directory; measure them here, so that the first
    # case's planning time is planning, not this one-off micro-benchmark.
    from autontk.costmodel import device
    t0 = time.perf_counter()
    device.constants()
    info["device_calibration_s"] = time.perf_counter() - t0
  tag = args.tag or default_tag(info)
  out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         "results", tag)
  os.makedirs(out_dir, exist_ok=True)
  if args.report_only:
    report.render(out_dir)
    return 0

  peers = () if args.peers == "none" else tuple(args.peers.split(","))
  budget = args.budget_mib or (32 if args.quick else 8192)
  cfg = suites.RunConfig(quick=args.quick, peers=peers,
                         budget_bytes=budget * 2**20,
                         tune_budget_s=15.0 if args.quick else 60.0,
                         case_filter=args.cases,
                         max_run_flops=3e10 if args.quick else None)
  names = args.only or list(suites.SUITES)
  t_all = time.perf_counter()
  for name in names:
    print(f"=== suite {name} ({'quick' if args.quick else 'full'}) ===",
          flush=True)
    path = os.path.join(out_dir, f"{name}.json")
    t0 = time.perf_counter()

    def save(res, name=name, path=path, t0=t0):
      res.update(machine=info, tag=tag, quick=cfg.quick,
                 policy=cfg.policy.to_dict(),
                 date_utc=time.strftime("%Y-%m-%d %H:%M", time.gmtime()))
      res.setdefault("suite_wall_s", time.perf_counter() - t0)
      if name == "memory":
        res.setdefault("budget_bytes", cfg.budget_bytes)
      with open(path, "w") as fh:
        json.dump(res, fh, indent=1, default=str)

    try:
      res = suites.run(name, dataclasses.replace(cfg, checkpoint=save),
                       log=lambda *a: print(*a, flush=True))
    except KeyboardInterrupt:  # e.g. `timeout --signal=INT` in bench/gpu.sh
      print(f"=== {name} interrupted; finished cases kept in {path} ===",
            flush=True)
      break
    save(res)
    print(f"=== {name} done in {res['suite_wall_s']:.0f} s ===", flush=True)
  report.render(out_dir)
  print(f"all done in {time.perf_counter() - t_all:.0f} s; results in "
        f"{out_dir}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
