"""The commands of ``autontk``: tune, report, calibrate, cache, diagnose.

Each ``cmd_<name>(args)`` runs one sub-command on parsed arguments and
returns the exit status; a user error raises :class:`CliError`.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import jax

from autontk._api import ntk_fn
from autontk.auto.planner import signature_of
from autontk.auto.report import CostReport
from autontk.auto.tuner import tune
from autontk.cli import models, routes
from autontk.cli.errors import CliError
from autontk.costmodel import calibration
from autontk.costmodel.predict import default_predictor
from autontk.diagnostics import report as diagnostics_report
from autontk.plancache import PlanCache
from autontk.suite import SUITE


def _cache(args) -> PlanCache:
  return PlanCache(args.cache_dir)


def _tune_one(name: str, model: dict[str, Any], args, cache) -> dict[str, Any]:
  result = tune(model["f"], model["x1"], model["x2"], model["params"],
                **models.ntk_options(model), budget_s=args.budget,
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


def _tune_routes(args, model: dict[str, Any]) -> int:
  if args.k < 1 or args.rhs < 1 or not 0 < args.tol < 1 or args.ridge < 0:
    raise CliError("--k and --rhs must be positive, 0 < --tol < 1 and "
                   "--ridge >= 0.")
  out = routes.time_routes(model, args.routes, k=args.k, rhs=args.rhs,
                           tol=args.tol, ridge=args.ridge,
                           repeats=args.repeats)
  print(json.dumps(out, indent=1) if args.json else
        f"{args.model}\n{routes.format_routes(out)}")
  return 0


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
    model = models.apply_overrides(models.build_model(SUITE[name], settings, name), args)
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
  factory = models.load_factory(args.model)
  model = models.apply_overrides(models.build_model(factory, settings, args.model), args)
  if args.routes:
    return _tune_routes(args, model)
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
  factory = models.load_factory(target)
  model = models.apply_overrides(models.build_model(factory, dict(args.set or []), target),
                           args)
  ntk = ntk_fn(model["f"], **models.ntk_options(model), plan_cache=cache)
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


def cmd_diagnose(args) -> int:
  factory = models.load_factory(args.model)
  model = models.apply_overrides(
      models.build_model(factory, dict(args.set or []), args.model,
                         extra_keys=("y", "params_b")), args)
  options = models.ntk_options(model)
  options.pop("vmap_axes", None)  # a performance hint, never the values
  unsupported = sorted(set(options) - {"trace_axes", "wrt", "groups"})
  if unsupported:
    raise CliError(f"diagnose takes the NTK options trace_axes, wrt and "
                   f"groups; the model also gives {unsupported}.")
  try:
    rep = diagnostics_report(
        model["f"], model["x1"], model["params"], y=model.get("y"),
        params_b=model.get("params_b"),
        groups=options.pop("groups", None) or "layer",
        k=args.k, probes=args.probes, route=args.route,
        memory_budget=args.memory_budget, seed=args.seed,
        kwargs=model["kwargs"], **options)
  except ValueError as e:  # the factory's data or options: the user's to fix
    raise CliError(f"{args.model}: {e}") from None
  print(rep)
  if args.plot:
    try:
      rep.plot(args.plot)
    except ImportError as e:
      raise CliError(str(e)) from None
    print(f"Plot written to {args.plot}.")
  return 0
