"""``python -m bench [--list] [--quick] [--only SUITE ...] [--tag TAG]``.

Runs the suites of :mod:`bench.suites` in order and records each with
:mod:`bench.record`: ``bench/results/<tag>/<suite>.json`` and ``.md`` (and,
for the case-based suites, ``.csv`` and ``.png``), plus the folder's
``README.md`` index. The tag defaults to this machine's
(:func:`bench.record.machine_tag`). The peers' environments
(``.venv-bench-nt``, ``.venv-bench-torch``) are created on first use.
``--report-only`` re-renders the Markdown and plots from saved JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

from autontk.costmodel import device
from bench import record
from bench.config import RunConfig
from bench.suites import SUITES, Suite


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--list", action="store_true",
                 help="list the suites, one line each, and exit")
  p.add_argument("--quick", action="store_true",
                 help="small shapes, short timings (minutes on 2 cores)")
  p.add_argument("--only", nargs="+", choices=list(SUITES), metavar="SUITE",
                 help="run only these suites")
  p.add_argument("--tag", help="results folder (default: the machine's tag)")
  p.add_argument("--peers", default="nt,torch,jax",
                 help="comma list of peers to run (nt, torch, jax) or 'none'")
  p.add_argument("--budget-mib", type=float, default=None,
                 help="memory budget of the memory suite and of its auto "
                      "plans (default 32 MiB quick, 8192 MiB full)")
  p.add_argument("--cases", help="regular expression: only matching cases")
  p.add_argument("--report-only", action="store_true",
                 help="re-render Markdown and plots from saved JSON")
  return p


def _config(args) -> RunConfig:
  budget = args.budget_mib or (32 if args.quick else 8192)
  return RunConfig(
      quick=args.quick,
      peers=() if args.peers == "none" else tuple(args.peers.split(",")),
      budget_bytes=budget * 2**20,
      tune_budget_s=15.0 if args.quick else 60.0, case_filter=args.cases,
      max_run_flops=3e10 if args.quick else None)


def render(out_dir: str, suite: Suite, res: dict) -> None:
  """``<suite>.md`` (and the suite's figures) from a recorded result."""
  def markdown(r):
    text = suite.markdown(r)
    if suite.figures is not None:
      text = text.rstrip() + "\n\n" + suite.figures(out_dir, r)
    return text
  record.write_markdown(out_dir, suite.name, res, markdown)


def index(out_dir: str) -> None:
  """The folder's ``README.md``: each recorded suite, its date and mode."""
  lines = {}
  for name, suite in SUITES.items():
    res = record.load(out_dir, name)
    if res is not None:
      lines[name] = (f"{suite.summary} ({res.get('date_utc', '?')} UTC, "
                     f"{'quick' if res.get('quick') else 'full'} mode)")
  record.update_index(out_dir, lines)


def run_suite(suite: Suite, cfg: RunConfig, out_dir: str, tag: str,
              info: dict) -> bool:
  """Runs, records and renders one suite; ``False`` if interrupted."""
  t0 = time.perf_counter()

  def save(res):
    record.stamp(res, suite=suite.name, tag=tag, info=info, quick=cfg.quick)
    res.setdefault("suite_wall_s", time.perf_counter() - t0)
    record.save(out_dir, suite.name, res)

  try:
    res = suite.run(dataclasses.replace(cfg, checkpoint=save),
                    lambda *a: print(*a, flush=True))
  except KeyboardInterrupt:  # `timeout --signal=INT` in bench/gpu.sh
    print(f"=== {suite.name} interrupted; finished cases kept ===",
          flush=True)
    return False
  res.pop("partial", None)
  res["suite_wall_s"] = time.perf_counter() - t0
  save(res)
  render(out_dir, suite, res)
  print(f"=== {suite.name} done in {res['suite_wall_s']:.0f} s ===",
        flush=True)
  return True


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.list:
    width = max(map(len, SUITES))
    for name, suite in SUITES.items():
      print(f"{name:<{width}}  {suite.summary}")
    return 0
  # A fresh plan cache, and no persistent JAX cache, so planning and
  # first-call times are cold (the plancache suite sets its own).
  os.environ.setdefault("AUTONTK_CACHE_DIR",
                        tempfile.mkdtemp(prefix="autontk-bench-"))
  os.environ.setdefault("AUTONTK_JAX_CACHE", "0")
  info = record.machine_info()
  tag = args.tag or record.machine_tag(info)
  out_dir = record.results_dir(tag)
  names = args.only or list(SUITES)
  if args.report_only:
    for name in names:
      res = record.load(out_dir, name)
      if res is not None:
        render(out_dir, SUITES[name], res)
    index(out_dir)
    return 0
  # The cost model's device constants are measured once per device and
  # stored in the cache directory; measured here, the first case's planning
  # time is planning, not this one-off micro-benchmark.
  t0 = time.perf_counter()
  device.constants()
  info["device_calibration_s"] = time.perf_counter() - t0
  cfg = _config(args)
  t_all = time.perf_counter()
  for name in names:
    print(f"=== suite {name} ({'quick' if cfg.quick else 'full'}) ===",
          flush=True)
    if not run_suite(SUITES[name], cfg, out_dir, tag, info):
      break
  index(out_dir)
  print(f"all done in {time.perf_counter() - t_all:.0f} s; results in "
        f"{out_dir}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
