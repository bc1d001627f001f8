"""The case-based suites: autontk's methods, auto and the peers per case.

``reference``, ``scaling``, ``regret`` and ``memory`` run the cases of
:mod:`bench.cases`. Each returns ``{"cases": [...]}`` where each case holds
its description and ``results[runner][method] = record`` (see
:func:`bench.measure.measure_jit` for the record's fields). Runners:
``autontk`` (methods + ``auto``), ``jax`` (plain ``jacrev``), ``nt``
(neural-tangents 0.6.5 methods 1-3) and ``torch`` (torch.func recipes).

Every kernel is compared against autontk's Jacobian contraction (or the
plain-JAX one where that failed): ``rel_err`` = max |K - K_ref| / max |K_ref|.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import numpy as np

from bench import autontk_runner, cases as cases_mod
from bench.config import RunConfig
from bench.peers import envs


def _strip(obj: Any) -> Any:
  """Drops in-memory kernels (keys starting with '_') before JSON."""
  if isinstance(obj, dict):
    return {k: _strip(v) for k, v in obj.items() if not k.startswith("_")}
  if isinstance(obj, list):
    return [_strip(v) for v in obj]
  return obj


def rel_err(k: np.ndarray | None, ref: np.ndarray | None) -> float | None:
  if k is None or ref is None:
    return None
  if k.shape != ref.shape:
    return float("inf")
  scale = float(np.max(np.abs(ref))) or 1.0
  return float(np.max(np.abs(k - ref)) / scale)


def _reference_kernel(results: dict[str, dict[str, Any]]) -> np.ndarray | None:
  for runner, method in (("autontk", "jacobian_contraction"),
                         ("jax", "jax_jacrev"),
                         ("autontk", "structured_derivatives")):
    k = results.get(runner, {}).get(method, {}).get("_result")
    if k is not None:
      return k
  return None


def _check_kernels(results: dict[str, dict[str, Any]]) -> None:
  ref = _reference_kernel(results)
  for recs in results.values():
    for rec in recs.values():
      if isinstance(rec, dict) and "_result" in rec:
        rec["rel_err"] = rel_err(rec["_result"], ref)


def _peer_skips(cases, per_case, limit) -> dict[str, list[str]]:
  """Peer methods to skip: autontk's program for the same method is heavy.

  autontk's FLOPs stand in for the peer's own: torch gives none, and jax
  0.4.23's CPU cost analysis undercounts neural-tangents' programs by orders
  of magnitude (e.g. 6·10⁶ FLOPs for a 10¹¹-FLOP Jacobian contraction).
  """
  skip: dict[str, list[str]] = {}
  if not limit:
    return skip
  for c in cases:
    a = per_case[c.name].get("autontk", {})
    for key, method, lim in (
        ("torch_jc", "jacobian_contraction", limit / 4),
        ("torch_ntvp", "ntk_vector_products", limit / 4),
        ("nt1", "jacobian_contraction", limit),
        ("nt2", "ntk_vector_products", limit)):
      fl = a.get(method, {}).get("flops")
      if fl and fl > lim:
        skip.setdefault(c.name, []).append(key)
  return skip


def _peer_job(cases: list[cases_mod.Case], cfg: RunConfig, work: str,
              max_run_flops: float | None, skip: dict[str, list[str]],
              implementations: list[int]) -> dict[str, Any]:
  """The job file a peer's runner reads (``bench.peers``)."""
  return {"cases": [c.to_json() for c in cases], "dir": work,
          "max_run_flops": max_run_flops, "skip": skip,
          "policy": cfg.policy.to_dict(), "implementations": implementations,
          "budget_bytes": None,
          "torch_device": os.environ.get("AUTONTK_BENCH_TORCH_DEVICE")}


def _run_peers(suite: str, cases: list[cases_mod.Case], cfg: RunConfig,
               per_case: dict[str, dict[str, dict[str, Any]]],
               log) -> dict[str, Any]:
  """Runs the out-of-process peers on all cases; returns their versions."""
  meta: dict[str, Any] = {}
  work = os.path.join(cfg.work, suite)
  job = _peer_job(cases, cfg, work, cfg.max_run_flops,
                  _peer_skips(cases, per_case, cfg.max_run_flops), [1, 2, 3])
  for peer in ("nt", "torch"):
    if peer not in cfg.peers:
      continue
    log(f"[{suite}] running peer {peer} on {len(cases)} cases")
    res = envs.run(peer, job, work, cfg.peer_timeout_s, log)
    meta[peer] = {k: res.get(k) for k in ("versions", "returncode", "wall_s",
                                          "error")}
    for c in cases:
      recs = res.get("cases", {}).get(c.name, {})
      try:
        z = np.load(os.path.join(work, f"{peer}_{c.name}.npz"))
        for k in z.files:
          if k in recs:
            recs[k]["_result"] = z[k]
      except OSError:
        pass
      per_case[c.name][peer] = recs or {
          "-": {"error": res.get("error", "no result")}}
  return meta


def _prepare(suite: str, cases: list[cases_mod.Case], cfg: RunConfig) -> None:
  work = os.path.join(cfg.work, suite)
  shutil.rmtree(work, ignore_errors=True)
  os.makedirs(work, exist_ok=True)
  for c in cases:
    c.save(work)


def run_suite_cases(suite: str, cases: list[cases_mod.Case], cfg: RunConfig,
                    *, auto: bool = True, peers: bool = True,
                    budget_bytes: float | None = None,
                    tuned: bool = False,
                    auto_options: dict[str, Any] | None = None,
                    max_run_flops: float | None = None,
                    log=print) -> dict[str, Any]:
  """autontk (+ jax jacrev) in process, then the peers; kernels checked."""
  cases = [c for c in cases if cfg.selected(c.name)]
  _prepare(suite, cases, cfg)
  per_case: dict[str, dict[str, dict[str, Any]]] = {}
  methods = tuple(autontk_runner.EXPLICIT)
  autontk_runner.warm_up()
  for c in cases:
    log(f"[{suite}] {c.name}: P={c.n_params:,} O={c.out_dim} N={c.n1}x{c.n2}"
        f" {'trace' if c.trace else 'full'}")
    recs = autontk_runner.run_case(
        c, cfg.policy, methods=methods, auto=auto,
        jacrev=peers and "jax" in cfg.peers, budget_bytes=budget_bytes,
        max_run_flops=max_run_flops or cfg.max_run_flops,
        auto_options=auto_options, log=log)
    per_case[c.name] = {"autontk": {m: recs[m] for m in methods}}
    if auto:
      per_case[c.name]["autontk"]["auto"] = recs["auto"]
      if tuned:
        rec = autontk_runner.run_tuned(c, cfg.policy, recs,
                                       budget_s=cfg.tune_budget_s)
        log(f"  autontk tuned {autontk_runner.fmt(rec)} "
            f"plan={rec.get('plan')}")
        per_case[c.name]["autontk"]["auto_tuned"] = rec
    if "jax_jacrev" in recs:
      per_case[c.name]["jax"] = {"jax_jacrev": recs["jax_jacrev"]}
    if cfg.checkpoint is not None:
      cfg.checkpoint(_strip({"partial": True, "cases": [
          dict(k.to_json(), n_params=k.n_params, out_dim=k.out_dim,
               kernel_entries=k.kernel_entries, results=per_case[k.name])
          for k in cases if k.name in per_case]}))
  meta = _run_peers(suite, cases, cfg, per_case, log) if peers else {}
  out_cases = []
  for c in cases:
    _check_kernels(per_case[c.name])
    d = c.to_json()
    d.update(n_params=c.n_params, out_dim=c.out_dim,
             kernel_entries=c.kernel_entries, results=per_case[c.name])
    out_cases.append(d)
  return _strip({"peers": meta, "cases": out_cases})


def _nt3_round(cases: list[cases_mod.Case], cfg: RunConfig,
               log) -> dict[str, float | None]:
  """neural-tangents' method 3 alone, once over the cases (seconds)."""
  work = os.path.join(cfg.work, "reference")
  res = envs.run("nt", _peer_job(cases, cfg, work, None, {}, [3]), work,
                 cfg.peer_timeout_s, log)
  return {c.name: res.get("cases", {}).get(c.name, {}).get("nt3", {}).get(
      "median_s") for c in cases}


def head_to_head(cases: list[cases_mod.Case], cfg: RunConfig, rounds: int,
                 log=print) -> dict[str, dict[str, list]]:
  """Structured derivatives and neural-tangents' method 3, timed in
  ``rounds`` alternating rounds (autontk's, then the peer's process).

  The main run times each peer once, minutes after autontk, so a shared
  machine's drift between the two lands in their ratio; the per-round
  ratios' median holds it to each round's own minute.
  Returns ``{case: {"sd_s": [...], "nt3_s": [...]}}``.
  """
  if "nt" not in cfg.peers or rounds < 1:
    return {}
  out = {c.name: {"sd_s": [], "nt3_s": []} for c in cases}
  for r in range(rounds):
    log(f"[reference] head-to-head round {r + 1}/{rounds}")
    for c in cases:
      rec = autontk_runner.run_explicit(c, "structured_derivatives",
                                        cfg.policy)
      out[c.name]["sd_s"].append(rec.get("median_s"))
    for name, t in _nt3_round(cases, cfg, log).items():
      out[name]["nt3_s"].append(t)
  return out


# Suites ---------------------------------------------------------------------


def reference(cfg: RunConfig, log=print) -> dict[str, Any]:
  """The reference cases + a ResNet and a transformer block, all peers;
  then structured derivatives against method 3 in alternating rounds."""
  cases = cases_mod.reference(cfg.quick)
  res = run_suite_cases("reference", cases, cfg, log=log)
  rounds = head_to_head([c for c in cases if cfg.selected(c.name)], cfg,
                        HEAD_TO_HEAD_ROUNDS, log)
  for c in res["cases"]:
    if c["name"] in rounds:
      c["head_to_head"] = rounds[c["name"]]
      c["sd_phases"] = autontk_runner.sd_phases(
          next(k for k in cases if k.name == c["name"]))
  return res


HEAD_TO_HEAD_ROUNDS = 5


def scaling(cfg: RunConfig, log=print) -> dict[str, Any]:
  """MLP FLOPs per NTK entry vs width and vs O (autontk methods + auto)."""
  return run_suite_cases("scaling", cases_mod.scaling(cfg.quick), cfg,
                         peers=False, log=log,
                         max_run_flops=3e10 if cfg.quick else 1e12)


def regret(cfg: RunConfig, log=print) -> dict[str, Any]:
  """Every explicit method and auto (cost model; tuned when available)."""
  return run_suite_cases("regret", cases_mod.regret(cfg.quick), cfg,
                         peers=False, tuned=True, log=log)


def memory(cfg: RunConfig, log=print) -> dict[str, Any]:
  """ResNet / ViT / Mixer at several O under a memory budget."""
  res = run_suite_cases("memory", cases_mod.memory(cfg.quick), cfg,
                        peers=False, budget_bytes=cfg.budget_bytes,
                        auto_options={"memory_budget": cfg.budget_bytes},
                        log=log)
  res["budget_bytes"] = cfg.budget_bytes
  return res
