"""The ``autontk`` command: tune models, inspect reports, manage the plan cache.

Run ``autontk --help`` (or ``python -m autontk.cli --help``) for the
commands; docs/cli.md walks through them.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from autontk import adapters
from autontk._api import ntk_fn
from autontk._version import __version__
from autontk.auto.planner import signature_of
from autontk.auto.report import CostReport
from autontk.auto.tuner import tune
from autontk.costmodel import calibration
from autontk.costmodel.predict import default_predictor
from autontk.plancache import PlanCache
from autontk.suite import SUITE

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
     "vmap_axes": 0,
     "wrt": None, "groups": None,                    # optional kernel options
     "pseudo_axes": None, "precision": None}

or a tuple (f, params, x1) or (f, params, x1, x2), where f(params, x,
**kwargs) is the network, or a model object autontk.ntk_fn takes (an
nnx.Module, an equinox Module, autontk.adapters.linen(module, variables)...;
params then in that library's form). The kernel options are those of
autontk.ntk_fn. Command-line NTK options override the factory's.
The bundled models are examples: `autontk tune autontk.suite:mlp_tanh`.
"""


KERNEL_OPTIONS = ("wrt", "groups", "pseudo_axes", "precision")
"""Factory keys passed to ``autontk.ntk_fn`` as they are."""


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
           "vmap_axes", *KERNEL_OPTIONS}
  extra = sorted(set(made) - known)
  if extra:
    raise CliError(f"{name} returned unknown keys {extra}; allowed: "
                   f"{sorted(known)}.")
  if not callable(adapters.apply_fn(made["f"])):
    raise CliError(f"{name}: 'f' must be callable as f(params, x), or a "
                   "model object (see autontk.adapters).")
  out = {"x2": None, "kwargs": {}, "trace_axes": (-1,), "diagonal_axes": (),
         "vmap_axes": None, **{k: None for k in KERNEL_OPTIONS}, **made}
  out["kwargs"] = dict(out["kwargs"] or {})
  return out


def _resize(x, n: int):
  """Batch of ``n`` examples from ``x`` (axis 0 of every leaf), tiling."""
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
  key, sep, value = text.partition("=")
  if not sep or not key.isidentifier():
    raise argparse.ArgumentTypeError(
        f"expected KEY=VALUE with a Python identifier KEY; got {text!r}")
  try:
    return key, ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return key, value  # a bare string, e.g. activation=relu


# Commands ---------------------------------------------------------------------

def _cache(args) -> PlanCache:
  return PlanCache(args.cache_dir)


def _ntk_options(model):
  vmap = model["vmap_axes"]
  return {"trace_axes": model["trace_axes"],
          "diagonal_axes": model["diagonal_axes"],
          "vmap_axes": None if vmap == "none" else vmap,
          **{k: model[k] for k in KERNEL_OPTIONS}}


def _tune_one(name: str, model: dict[str, Any], args, cache) -> dict[str, Any]:
  result = tune(model["f"], model["x1"], model["x2"], model["params"],
                **_ntk_options(model), budget_s=args.budget,
                max_trials=args.trials, progress=not args.no_progress,
                cache=cache, **model["kwargs"])
  report = result.report()
  if not args.json:
    print(f"{name}")
    print(report)
    print()
  return {"model": name, "signature": result.signature.digest,
          "plan": result.plan.describe(), "elapsed_s": result.elapsed_s,
          "report": report.to_dict()}


def _tune_suite(args, settings, cache) -> int:
  if args.model:
    raise CliError("Give either MODEL or --suite, not both.")
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


def cmd_tune(args) -> int:
  settings = dict(args.set or [])
  cache = _cache(args)
  if args.suite:
    return _tune_suite(args, settings, cache)
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


def _evaluate_calibration(cache: PlanCache,
                          device_kind: str | None = None) -> dict[str, Any]:
  """Held-out quality of the calibration on ``cache``'s timings of
  ``device_kind`` (default: this machine's), over this machine's roofline
  when the timings are from this device kind, else over the predictions
  stored with them."""
  here = jax.devices()[0].device_kind
  device_kind = device_kind or here
  rows = cache.measurements(device_kind)
  if rows and device_kind == here:
    rows = calibration.rebase(rows, default_predictor())
  return {"device_kind": device_kind, **calibration.evaluate(rows)}


def _calibration_summary(cache) -> dict[str, Any] | None:
  try:
    return _evaluate_calibration(cache)
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
  cache = _cache(args)
  try:
    summary = _evaluate_calibration(cache, args.device_kind)
  except calibration.NotEnoughData as e:
    raise CliError(str(e))
  if args.json:
    print(json.dumps(summary, indent=1))
  else:
    print(_format_calibration(summary))
  return 0


def _cached_report(cache: PlanCache, digest: str) -> CostReport | None:
  """The report of a cached signature's candidate rows (``None``: none)."""
  entry = cache.entry(digest)
  estimates = cache.candidates(digest)
  if entry is None and not estimates:
    return None
  chosen = cache.lookup(digest) if entry is not None else None
  source = entry["source"] if entry else "not chosen"
  return CostReport(
      estimates=tuple(estimates), chosen=chosen,
      planning_time=float((entry or {}).get("planning_s") or 0.0),
      device=(entry or {}).get("device_kind", ""),
      predictor=f"plan cache ({source})",
      call=f"signature {digest[:12]}")


def _model_report(cache: PlanCache, target: str,
                  args) -> tuple[str, CostReport]:
  """``(signature, report)`` of a MODULE:FACTORY: its cached rows, else the
  cost model's report, computed now."""
  factory = load_factory(target)
  model = _apply_overrides(build_model(factory, dict(args.set or []), target),
                           args)
  ntk = ntk_fn(model["f"], **_ntk_options(model), plan_cache=cache)
  args3 = (model["x1"], model["x2"], model["params"])
  digest = signature_of(ntk, *args3, model["kwargs"]).digest
  report = _cached_report(cache, digest)
  if report is None or not report.estimates:
    report = ntk.report(*args3, **model["kwargs"])
  return digest, report


def cmd_report(args) -> int:
  cache = _cache(args)
  if ":" in args.target:
    digest, report = _model_report(cache, args.target, args)
  else:
    digest = _resolve(cache, args.target)
    report = _cached_report(cache, digest)
    if report is None:
      raise CliError(f"Nothing cached for signature {digest[:12]}; run "
                     "`autontk tune MODEL` first.")
  if args.plot:
    _plot(report, args.plot)
  if args.json:
    print(json.dumps({"signature": digest, "source": cache.source(digest),
                      **report.to_dict()}, indent=1))
    return 0
  print(report)
  if args.plot:
    print(f"Plot written to {args.plot}.")
  return 0


def _plot(report: CostReport, path: str) -> None:
  try:
    report.plot(path)
  except ImportError as e:
    raise CliError(str(e)) from None


def _resolve(cache, prefix: str) -> str:
  try:
    return cache.resolve(prefix)
  except (KeyError, ValueError) as e:
    raise CliError(str(e).strip('"')) from None


def _cache_ls(cache: PlanCache, args) -> int:
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


def _cache_show(cache: PlanCache, args) -> int:
  digest = _resolve(cache, args.signature)
  entry = cache.entry(digest) or {"signature": digest}
  report = _cached_report(cache, digest)
  if args.json:
    entry["report"] = None if report is None else report.to_dict()
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
  if report is not None:
    print()
    print(report)
  return 0


def _cache_clear(cache: PlanCache, args) -> int:
  if args.signature:
    digest = _resolve(cache, args.signature)
    print(f"Removed {cache.clear(digest)} plan ({digest[:12]}).")
    return 0
  if not args.yes:
    raise CliError(f"This deletes every plan in {cache.path}; add --yes "
                   "to confirm (or give one SIGNATURE).")
  print(f"Removed {cache.clear()} plans from {cache.path}.")
  return 0


def _cache_export(cache: PlanCache, args) -> int:
  sigs = [_resolve(cache, s) for s in args.signatures] or None
  n = cache.export(args.file, sigs)
  print(f"Exported {n} plans to {args.file}.")
  return 0


def _cache_import(cache: PlanCache, args) -> int:
  try:
    n = cache.import_file(args.file)
  except (ValueError, OSError) as e:
    raise CliError(str(e))
  print(f"Imported {n} plans into {cache.path}.")
  return 0


_CACHE_ACTIONS = {"ls": _cache_ls, "show": _cache_show, "clear": _cache_clear,
                  "export": _cache_export, "import": _cache_import}


def cmd_cache(args) -> int:
  action = _CACHE_ACTIONS.get(args.cache_action)
  if action is None:
    raise CliError(f"Unknown cache action {args.cache_action!r}.")
  return action(_cache(args), args)


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
  """The ``autontk`` argument parser (one sub-parser per command)."""
  parser = argparse.ArgumentParser(
      prog="autontk", description=DESCRIPTION,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cache-dir", metavar="DIR",
                      help="plan cache directory (default: $AUTONTK_CACHE_DIR"
                           ", else your user cache directory)")
  parser.add_argument("--version", action="version",
                      version=f"autontk {__version__}")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  _add_tune(sub)
  _add_report(sub)
  _add_calibrate(sub)
  _add_cache(sub)
  return parser


def _add_tune(sub) -> None:
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


def _add_report(sub) -> None:
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


def _add_calibrate(sub) -> None:
  p = sub.add_parser(
      "calibrate",
      help="held-out accuracy of the learned timing model on cached timings",
      description="Fit the learned calibration (predicted time from cost "
                  "features) on every timing in the cache for one device "
                  "kind, and report its leave-one-model-out accuracy next to "
                  "the cost model's. Tuned timings accumulate with "
                  "`autontk tune`; `autontk tune --suite` gives a good start.")
  p.add_argument("--device-kind", metavar="KIND",
                 help="device kind to calibrate (default: this machine's)")
  p.add_argument("--json", action="store_true", help="print JSON")
  p.set_defaults(run=cmd_calibrate)


def _add_cache(sub) -> None:
  p = sub.add_parser("cache", help="list, show, clear, export, import plans",
                     description="Manage the plan cache.")
  p.set_defaults(run=lambda a: _missing(p, "an action"))
  csub = p.add_subparsers(dest="cache_action", metavar="ACTION")
  q = csub.add_parser("ls", help="list cached plans, newest first")
  q.add_argument("--json", action="store_true", help="print JSON")
  q = csub.add_parser("show", help="everything about one signature")
  q.add_argument("signature", metavar="SIGNATURE",
                 help="signature or its first digits")
  q.add_argument("--json", action="store_true", help="print JSON")
  q = csub.add_parser("clear", help="delete one plan, or all with --yes")
  q.add_argument("signature", nargs="?", metavar="SIGNATURE")
  q.add_argument("--yes", action="store_true", help="confirm deleting all")
  q = csub.add_parser(
      "export", help="write plans and timings to a JSON file",
      description="Write cached plans (all, or the SIGNATUREs given) and "
                  "their timings to FILE, to import on a machine with the "
                  "same device kind and library versions.")
  q.add_argument("file", metavar="FILE")
  q.add_argument("signatures", nargs="*", metavar="SIGNATURE")
  q = csub.add_parser("import", help="read plans from an exported file",
                      description="Merge an exported FILE into the cache; a "
                                  "tuned plan is never replaced by an "
                                  "untuned one.")
  q.add_argument("file", metavar="FILE")
  for action in csub.choices.values():
    action.set_defaults(run=cmd_cache)


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
