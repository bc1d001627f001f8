"""The ``autontk`` command: tune models, inspect reports, manage the plan cache.

Run ``autontk --help`` (or ``python -m autontk.cli --help``) for the
commands; docs/cli.md walks through them.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Sequence

DESCRIPTION = """\
Tune, inspect and cache autontk's NTK plans.

autontk computes empirical NTKs with one of several exact methods and batch
chunkings; implementation="auto" picks one per model signature (model, shapes,
options, device) and remembers it in a plan cache. This command fills and
inspects that cache.

Examples:
  autontk tune mypkg.models:make_mlp          tune one model (see `tune -h`)
  autontk tune ./model.py:build --n1 64       a factory in a file, batch 64
  autontk tune --suite                        calibrate a new accelerator
  autontk report mypkg.models:make_mlp        candidates, predicted vs measured
  autontk cache ls                            what is cached
  autontk cache export plans.json             move tuned plans to a twin machine
"""

TUNE_HELP = """\
Time every candidate plan (method × chunking) of one model on this machine's
default device, most promising first, and cache the fastest under the model's
signature. Later calls of ntk_fn(f) with the same model, shapes and options
use it without planning. An interrupted run resumes when run again.
"""

FACTORY_HELP = """\
MODEL is MODULE:FACTORY, e.g. `mypkg.models:make_mlp` or `./model.py:build`
(the current directory is importable). FACTORY is called with the --set
values as keyword arguments and must return either a dict

    {"f": f, "params": params, "x1": x1,            # required
     "x2": None, "kwargs": {},                       # optional
     "trace_axes": (-1,), "diagonal_axes": (),       # optional NTK options
     "vmap_axes": 0}

or a tuple (f, params, x1) or (f, params, x1, x2), where f(params, x,
**kwargs) is the network. Command-line NTK options override the factory's.
The bundled models are examples: `autontk tune autontk.suite:mlp_tanh`.
"""


class CliError(Exception):
  """A user error: printed without a traceback, exit status 2."""


# Models -----------------------------------------------------------------------

def load_factory(spec: str):
  """``MODULE:FACTORY`` or ``path/file.py:FACTORY`` -> the factory."""
  module_name, sep, attr = spec.rpartition(":")
  if not sep or not module_name or not attr:
    raise CliError(f"MODEL must look like MODULE:FACTORY (e.g. "
                   f"mypkg.models:make_mlp or ./model.py:build); got {spec!r}.")
  if module_name.endswith(".py") or os.sep in module_name:
    path = pathlib.Path(module_name)
    if not path.is_file():
      raise CliError(f"No such file: {path}.")
    mod_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
      mod_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - shown to the user
      raise CliError(f"Importing {path} failed: {type(e).__name__}: {e}")
  else:
    if "" not in sys.path and os.getcwd() not in sys.path:
      sys.path.insert(0, os.getcwd())
    try:
      module = importlib.import_module(module_name)
    except ImportError as e:
      raise CliError(f"Cannot import module {module_name!r}: {e}. Is it on "
                     "PYTHONPATH (or in the current directory)?")
  factory = getattr(module, attr, None)
  if factory is None:
    names = sorted(n for n, v in vars(module).items()
                   if not n.startswith("_") and callable(v) and
                   getattr(v, "__module__", None) == module.__name__)
    raise CliError(f"Module {module_name!r} has no {attr!r}; callables in "
                   f"it: {', '.join(names[:20]) or 'none'}.")
  if not callable(factory):
    raise CliError(f"{spec} is not callable.")
  return factory


def build_model(factory, settings: dict[str, Any], name: str) -> dict[str, Any]:
  """Calls a factory and normalises its result to the dict contract."""
  try:
    made = factory(**settings)
  except TypeError as e:
    if settings:
      raise CliError(f"{name}(**{settings}) failed: {e}. Check the --set "
                     "names against the factory's arguments.")
    raise
  if isinstance(made, (tuple, list)):
    if len(made) not in (3, 4):
      raise CliError(f"{name} returned a tuple of {len(made)} items; expected "
                     "(f, params, x1) or (f, params, x1, x2).")
    made = dict(zip(("f", "params", "x1", "x2"), made))
  if not isinstance(made, dict):
    raise CliError(f"{name} returned a {type(made).__name__}; expected a dict "
                   "with f, params, x1 (see `autontk tune -h`).")
  missing = [k for k in ("f", "params", "x1") if k not in made]
  if missing:
    raise CliError(f"{name} returned a dict without {', '.join(missing)}; it "
                   "needs at least f, params and x1.")
  known = {"f", "params", "x1", "x2", "kwargs", "trace_axes", "diagonal_axes",
           "vmap_axes"}
  extra = sorted(set(made) - known)
  if extra:
    raise CliError(f"{name} returned unknown keys {extra}; allowed: "
                   f"{sorted(known)}.")
  if not callable(made["f"]):
    raise CliError(f"{name}: 'f' must be callable as f(params, x).")
  out = {"x2": None, "kwargs": {}, "trace_axes": (-1,), "diagonal_axes": (),
         "vmap_axes": None, **made}
  out["kwargs"] = dict(out["kwargs"] or {})
  return out


def _resize(x, n: int):
  """Batch of ``n`` examples from ``x`` (axis 0 of every leaf), tiling."""
  import jax
  import jax.numpy as jnp

  def one(a):
    a = jnp.asarray(a)
    if a.ndim == 0:
      raise CliError("--n1/--n2 need inputs with a batch axis (axis 0).")
    reps = -(-n // a.shape[0])
    return jnp.concatenate([a] * reps, axis=0)[:n]

  return jax.tree.map(one, x)


def _apply_overrides(model: dict[str, Any], args) -> dict[str, Any]:
  model = dict(model)
  for opt in ("trace_axes", "diagonal_axes", "vmap_axes"):
    v = getattr(args, opt, None)
    if v is not None:
      model[opt] = v
  if getattr(args, "n1", None):
    model["x1"] = _resize(model["x1"], args.n1)
  if getattr(args, "n2", None):
    model["x2"] = _resize(model["x1"] if model["x2"] is None else model["x2"],
                          args.n2)
  return model


def _parse_axes(text: str):
  text = text.strip().lower()
  if text in ("", "none", "()"):
    return ()
  try:
    return tuple(int(t) for t in text.replace(" ", "").strip("()").split(",")
                 if t)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated ints like -1 or 0,2 (or 'none'); got "
        f"{text!r}") from None


def _parse_vmap(text: str):
  text = text.strip().lower()
  if text in ("none", ""):
    return "none"
  try:
    return int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected an int batch axis or 'none'; got {text!r}") from None


def _parse_setting(text: str) -> tuple[str, Any]:
  import ast
  key, sep, value = text.partition("=")
  if not sep or not key.isidentifier():
    raise argparse.ArgumentTypeError(
        f"expected KEY=VALUE with a Python identifier KEY; got {text!r}")
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value  # a bare string, e.g. activation=relu


# Commands ---------------------------------------------------------------------

def _cache(args):
  from autontk.plancache import PlanCache
  return PlanCache(args.cache_dir)


def _ntk_options(model):
  vmap = model["vmap_axes"]
  return {"trace_axes": model["trace_axes"],
          "diagonal_axes": model["diagonal_axes"],
          "vmap_axes": None if vmap == "none" else vmap}


def _tune_one(name: str, model: dict[str, Any], args, cache) -> dict[str, Any]:
  from autontk.tuner import tune
  result = tune(model["f"], model["x1"], model["x2"], model["params"],
                **_ntk_options(model), budget_s=args.budget,
                max_trials=args.trials, progress=not args.no_progress,
                cache=cache, **model["kwargs"])
  if not args.json:
    print(f"{name}")
    print(result.table())
    print()
  return {"model": name, "signature": result.signature.digest,
          "plan": result.plan.describe(), "elapsed_s": result.elapsed_s,
          "candidates": [{"plan": r["plan"].describe(),
                          "predicted_s": r["predicted_s"],
                          "measured_s": r["measured_s"],
                          "feasible": r["feasible"], "reason": r["reason"]}
                         for r in result.rows]}


def cmd_tune(args) -> int:
  settings = dict(args.set or [])
  cache = _cache(args)
  if args.suite:
    if args.model:
      raise CliError("Give either MODEL or --suite, not both.")
    from autontk.suite import SUITE
    names = args.only or list(SUITE)
    unknown = [n for n in names if n not in SUITE]
    if unknown:
      raise CliError(f"Unknown suite models {unknown}; the suite has: "
                     f"{', '.join(SUITE)}.")
    results = []
    for i, name in enumerate(names):
      if not args.json:
        print(f"[{i + 1}/{len(names)}] ", end="")
      model = _apply_overrides(build_model(SUITE[name], settings, name), args)
      results.append(_tune_one(name, model, args, cache))
    summary = _calibration_summary(cache)
    if args.json:
      print(json.dumps({"results": results, "calibration": summary},
                       indent=1))
    else:
      print(f"Tuned {len(results)} models into {cache.path}.")
      if summary:
        print(_format_calibration(summary))
    return 0
  if not args.model:
    raise CliError("Give a MODEL (MODULE:FACTORY) to tune, or --suite. "
                   "See `autontk tune -h`.")
  factory = load_factory(args.model)
  model = _apply_overrides(build_model(factory, settings, args.model), args)
  out = _tune_one(args.model, model, args, cache)
  if args.json:
    print(json.dumps(out, indent=1))
  else:
    print(f"Cached under signature {out['signature'][:12]} in {cache.path}.")
  return 0


def _calibration_summary(cache) -> dict[str, Any] | None:
  from autontk import calibration
  try:
    return calibration.evaluate_cache(cache)
  except calibration.NotEnoughData:
    return None


def _format_calibration(s: dict[str, Any]) -> str:
  return (f"Calibration for {s['device_kind']}: {s['n_models']} models, "
          f"{s['n_measurements']} timings. Leave-one-model-out pairwise rank "
          f"accuracy {s['calibrated']['rank_accuracy']:.2f} (cost model "
          f"alone {_fmt(s['uncalibrated']['rank_accuracy'])}); geomean "
          f"regret of the top pick {s['calibrated']['geomean_regret']:.3f} "
          f"(cost model alone {_fmt(s['uncalibrated']['geomean_regret'])}).")


def _fmt(v) -> str:
  return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) \
      else f"{v:.3f}"


def cmd_calibrate(args) -> int:
  from autontk import calibration
  cache = _cache(args)
  try:
    summary = calibration.evaluate_cache(cache, device_kind=args.device_kind)
  except calibration.NotEnoughData as e:
    raise CliError(str(e))
  if args.json:
    print(json.dumps(summary, indent=1))
  else:
    print(_format_calibration(summary))
  return 0


def _rows_for_report(cache, digest: str) -> list[dict[str, Any]]:
  rows = []
  for r in cache.candidates(digest):
    feats = r.get("features") or {}
    rows.append({"plan": r["describe"], "predicted_s": r["predicted_s"],
                 "measured_s": r["measured_s"],
                 "flops": feats.get("flops"),
                 "peak_bytes": feats.get("peak_bytes"),
                 "feasible": bool(r["feasible"]), "reason": r["reason"]})
  return rows


def cmd_report(args) -> int:
  cache = _cache(args)
  target = args.target
  live_report = None
  if ":" in target:
    factory = load_factory(target)
    model = _apply_overrides(build_model(factory, dict(args.set or []),
                                         target), args)
    import autontk
    from autontk.cached_planner import signature_of
    ntk = autontk.ntk_fn(model["f"], **_ntk_options(model))
    args3 = (model["x1"], model["x2"], model["params"])
    digest = signature_of(ntk, *args3, model["kwargs"]).digest
    if not cache.candidates(digest):
      # Not tuned or planned yet: the cost model's report, computed now.
      live_report = ntk.report(*args3, **model["kwargs"])
  else:
    digest = _resolve(cache, target)
  entry = cache.entry(digest)
  rows = _rows_for_report(cache, digest)
  if live_report is not None and not rows:
    rows = _rows_from_live(live_report)
  if not rows and entry is None:
    raise CliError(f"Nothing cached for signature {digest[:12]} and no cost "
                   f"report available; run `autontk tune {target}` first.")
  chosen = entry["describe"] if entry else None
  if chosen is None and live_report is not None:
    chosen = live_report.chosen.describe()
  doc = {"signature": digest, "chosen": chosen,
         "source": entry["source"] if entry else None,
         "summary": entry["summary"] if entry else None, "candidates": rows}
  if args.plot:
    _plot(rows, chosen, args.plot)
  if args.json:
    print(json.dumps(doc, indent=1, default=str))
    return 0
  print(f"signature {digest[:12]}  chosen: {chosen or '-'}"
        f"  ({doc['source'] or 'not cached'})")
  print(_table(rows, chosen))
  if args.plot:
    print(f"Plot written to {args.plot}.")
  return 0


def _rows_from_live(report) -> list[dict[str, Any]]:
  """Report rows from the cost model's ``CostReport``."""
  return [{"plan": e.plan.describe(), "predicted_s": e.predicted_time,
           "measured_s": e.measured_time, "flops": e.flops,
           "peak_bytes": e.peak_memory, "feasible": bool(e.feasible),
           "reason": e.reason or ""} for e in report.estimates]


def _table(rows: list[dict[str, Any]], chosen: str | None) -> str:
  from autontk.tuner import _fmt_s
  head = (f"  {'plan':<52} {'predicted':>10} {'measured':>10} "
          f"{'GFLOP':>8} {'peak MiB':>9}  note")
  lines = [head]
  for r in rows:
    mark = "*" if r["plan"] == chosen else " "
    fl = "-" if not r.get("flops") else f"{r['flops'] / 1e9:.3f}"
    pk = "-" if not r.get("peak_bytes") else f"{r['peak_bytes'] / 2**20:.1f}"
    note = "" if r["feasible"] else (r["reason"] or "infeasible")
    lines.append(f"{mark} {r['plan'][:52]:<52} {_fmt_s(r['predicted_s']):>10}"
                 f" {_fmt_s(r['measured_s']):>10} {fl:>8} {pk:>9}  {note}")
  return "\n".join(lines)


def _plot(rows, chosen, path) -> None:
  try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
  except ImportError:
    raise CliError("--plot needs matplotlib: pip install 'autontk[plot]'.")
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
  for r in rows:
    color = "tab:red" if r["plan"] == chosen else "tab:blue"
    if r["predicted_s"] and r["measured_s"]:
      ax1.scatter(r["predicted_s"], r["measured_s"], c=color)
    t = r["measured_s"] or r["predicted_s"]
    if t and r.get("peak_bytes"):
      ax2.scatter(r["peak_bytes"] / 2**20, t, c=color,
                  marker="o" if r["measured_s"] else "x")
  lo_hi = [v for r in rows for v in (r["predicted_s"], r["measured_s"]) if v]
  if lo_hi:
    lo, hi = min(lo_hi), max(lo_hi)
    ax1.plot([lo, hi], [lo, hi], "k--", lw=0.8)
  ax1.set(xscale="log", yscale="log", xlabel="predicted s",
          ylabel="measured s", title="predicted vs measured (red: chosen)")
  ax2.set(xscale="log", yscale="log", xlabel="peak memory MiB",
          ylabel="time s (x: predicted only)", title="time vs memory")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def _resolve(cache, prefix: str) -> str:
  try:
    return cache.resolve(prefix)
  except (KeyError, ValueError) as e:
    raise CliError(str(e).strip('"')) from None


def cmd_cache(args) -> int:
  cache = _cache(args)
  action = args.cache_action
  if action == "ls":
    entries = cache.entries()
    if args.json:
      print(json.dumps([{k: e[k] for k in ("signature", "describe", "source",
                                           "device_kind", "updated")}
                        | {"model": (e.get("summary") or {}).get("model")}
                        for e in entries], indent=1))
      return 0
    if not entries:
      print(f"No plans cached in {cache.path}.")
      return 0
    print(f"{len(entries)} plans in {cache.path}")
    print(f"{'signature':<13} {'model':<18} {'x1':<18} {'source':<7} "
          f"{'device':<14} plan")
    for e in entries:
      s = e.get("summary") or {}
      x1 = ",".join((s.get("x1") or {}).get("leaves", []))[:18]
      model = str(s.get("model", "?")).replace(".<locals>.", ".")
      print(f"{e['signature'][:12]:<13} {model[:18]:<18} "
            f"{x1:<18} {e['source']:<7} {e['device_kind'][:14]:<14} "
            f"{e['describe']}")
    return 0
  if action == "show":
    digest = _resolve(cache, args.signature)
    entry = cache.entry(digest) or {"signature": digest}
    entry["candidates"] = _rows_for_report(cache, digest)
    if args.json:
      print(json.dumps(entry, indent=1, default=str))
      return 0
    for k in ("signature", "describe", "source", "device_kind", "backend",
              "versions", "planning_s"):
      if k in entry:
        print(f"{k:<12} {entry[k]}")
    for k in ("created", "updated"):
      if entry.get(k):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry[k]))
        print(f"{k:<12} {stamp}")
    summary = entry.get("summary") or {}
    for k in ("model", "x1", "x2", "params", "kwargs", "trace_axes",
              "diagonal_axes", "vmap_axes"):
      if k in summary:
        print(f"{k:<12} {summary[k]}")
    print(_table(entry["candidates"], entry.get("describe")))
    return 0
  if action == "clear":
    if args.signature:
      digest = _resolve(cache, args.signature)
      print(f"Removed {cache.clear(digest)} plan ({digest[:12]}).")
      return 0
    if not args.yes:
      raise CliError(f"This deletes every plan in {cache.path}; add --yes "
                     "to confirm (or give one SIGNATURE).")
    print(f"Removed {cache.clear()} plans from {cache.path}.")
    return 0
  if action == "export":
    sigs = [_resolve(cache, s) for s in args.signatures] or None
    n = cache.export(args.file, sigs)
    print(f"Exported {n} plans to {args.file}.")
    return 0
  if action == "import":
    try:
      n = cache.import_file(args.file)
    except (ValueError, OSError) as e:
      raise CliError(str(e))
    print(f"Imported {n} plans into {cache.path}.")
    return 0
  raise CliError(f"Unknown cache action {action!r}.")


# Parser -----------------------------------------------------------------------

def _add_model_options(p: argparse.ArgumentParser) -> None:
  p.add_argument("--set", metavar="KEY=VALUE", action="append",
                 type=_parse_setting,
                 help="keyword argument for the factory (repeatable); VALUE "
                      "is a Python literal, e.g. --set width=512")
  p.add_argument("--n1", type=int, metavar="N",
                 help="resize x1 to N examples (axis 0, tiling the "
                      "factory's examples)")
  p.add_argument("--n2", type=int, metavar="N",
                 help="use an x2 of N examples (default: the factory's x2, "
                      "or x2 = x1)")
  p.add_argument("--trace-axes", type=_parse_axes, metavar="AXES",
                 help="output axes summed over, e.g. -1 (logits) or none for "
                      "the full O×O block; default: the factory's, else -1")
  p.add_argument("--diagonal-axes", type=_parse_axes, metavar="AXES",
                 help="output axes kept as diagonals, e.g. 0 for per-example "
                      "kernels; default: the factory's, else none")
  p.add_argument("--vmap-axes", type=_parse_vmap, metavar="AXIS",
                 help="batch axis of inputs/outputs (enables chunked plans), "
                      "or none; default: the factory's")


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="autontk", description=DESCRIPTION,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cache-dir", metavar="DIR",
                      help="plan cache directory (default: $AUTONTK_CACHE_DIR"
                           ", else your user cache directory)")
  from autontk import __version__
  parser.add_argument("--version", action="version",
                      version=f"autontk {__version__}")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")

  p = sub.add_parser(
      "tune", help="time the candidate plans of a model and cache the best",
      description=TUNE_HELP + "\n" + FACTORY_HELP,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("model", nargs="?", metavar="MODEL",
                 help="MODULE:FACTORY returning the model (see above)")
  p.add_argument("--suite", action="store_true",
                 help="tune the bundled suite of small models (calibrates a "
                      "new accelerator) instead of MODEL")
  p.add_argument("--only", nargs="+", metavar="NAME",
                 help="with --suite: only these models")
  _add_model_options(p)
  p.add_argument("--budget", type=float, default=60.0, metavar="SECONDS",
                 help="time budget per model, compiles included "
                      "(default: 60)")
  p.add_argument("--trials", type=int, metavar="K",
                 help="time at most K candidates per model (default: all)")
  p.add_argument("--no-progress", action="store_true",
                 help="no progress bar")
  p.add_argument("--json", action="store_true", help="print JSON")
  p.set_defaults(run=cmd_tune)

  p = sub.add_parser(
      "report", help="candidate table of a cached signature or a model",
      description="Show every candidate plan of a model: predicted and "
                  "measured time, FLOPs, peak memory, feasibility, and which "
                  "plan is chosen (*). TARGET is a signature (or its first "
                  "digits, see `autontk cache ls`) or a MODEL as for tune.",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("target", metavar="TARGET",
                 help="SIGNATURE prefix or MODULE:FACTORY")
  _add_model_options(p)
  p.add_argument("--json", action="store_true", help="print JSON")
  p.add_argument("--plot", metavar="FILE.png",
                 help="also plot predicted vs measured and time vs memory")
  p.set_defaults(run=cmd_report)

  p = sub.add_parser(
      "calibrate",
      help="held-out accuracy of the learned timing model on cached timings",
      description="Fit the learned calibration (predicted time from HLO "
                  "features) on every timing in the cache for one device "
                  "kind, and report its leave-one-model-out accuracy next to "
                  "the cost model's. Tuned timings accumulate with "
                  "`autontk tune`; `autontk tune --suite` gives a good start.")
  p.add_argument("--device-kind", metavar="KIND",
                 help="device kind to calibrate (default: this machine's)")
  p.add_argument("--json", action="store_true", help="print JSON")
  p.set_defaults(run=cmd_calibrate)

  p = sub.add_parser("cache", help="list, show, clear, export, import plans",
                     description="Manage the plan cache.")
  p.set_defaults(run=lambda a: _missing(p, "an action"))
  csub = p.add_subparsers(dest="cache_action", metavar="ACTION")
  q = csub.add_parser("ls", help="list cached plans, newest first")
  q.add_argument("--json", action="store_true", help="print JSON")
  q.set_defaults(run=cmd_cache)
  q = csub.add_parser("show", help="everything about one signature")
  q.add_argument("signature", metavar="SIGNATURE",
                 help="signature or its first digits")
  q.add_argument("--json", action="store_true", help="print JSON")
  q.set_defaults(run=cmd_cache)
  q = csub.add_parser("clear", help="delete one plan, or all with --yes")
  q.add_argument("signature", nargs="?", metavar="SIGNATURE")
  q.add_argument("--yes", action="store_true", help="confirm deleting all")
  q.set_defaults(run=cmd_cache)
  q = csub.add_parser(
      "export", help="write plans and timings to a JSON file",
      description="Write cached plans (all, or the SIGNATUREs given) and "
                  "their timings to FILE, to import on a machine with the "
                  "same device kind and library versions.")
  q.add_argument("file", metavar="FILE")
  q.add_argument("signatures", nargs="*", metavar="SIGNATURE")
  q.set_defaults(run=cmd_cache)
  q = csub.add_parser("import", help="read plans from an exported file",
                      description="Merge an exported FILE into the cache; a "
                                  "tuned plan is never replaced by an "
                                  "untuned one.")
  q.add_argument("file", metavar="FILE")
  q.set_defaults(run=cmd_cache)
  return parser


def _missing(parser: argparse.ArgumentParser, what: str) -> int:
  parser.print_help(sys.stderr)
  raise CliError(f"Give {what}.")


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the ``autontk`` console script."""
  parser = make_parser()
  args = parser.parse_args(argv)
  if args.command is None:
    parser.print_help()
    return 0
  try:
    return int(args.run(args) or 0)
  except CliError as e:
    print(f"autontk {args.command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("\nInterrupted; a tuning run resumes where it stopped when run "
          "again.", file=sys.stderr)
    return 130
  except BrokenPipeError:  # `autontk cache ls | head`
    sys.stderr.close()
    return 0


if __name__ == "__main__":
  sys.exit(main())
