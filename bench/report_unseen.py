"""Markdown of the ``regret_unseen`` suite (:mod:`bench.regret_unseen`)."""

from __future__ import annotations

from typing import Any

SHORT = {"jacobian_contraction": "JC", "ntk_vector_products": "NTVP",
         "structured_derivatives": "SD"}


def _ms(rec: dict[str, Any] | None) -> str:
  if not rec:
    return "-"
  if "error" in rec:
    return "n/a"
  v = rec.get("median_s")
  return "-" if v is None else f"{v * 1e3:.3g}"


def _x(v: float | None) -> str:
  return "-" if v is None else f"{v:.2f}"


def _plan(rec: dict[str, Any]) -> str:
  m = rec.get("plan_method")
  plan = rec.get("plan") or ""
  short = SHORT.get(m, m or "-")
  return short + (" (chunked)" if "chunk" in plan.lower() and m else "")


def _predicted(case: dict[str, Any]) -> str:
  pred = case.get("predicted", {})
  parts = []
  for m, s in SHORT.items():
    p = pred.get(m, {}).get("predicted_s") if isinstance(pred.get(m),
                                                          dict) else None
    parts.append(f"{s} {p * 1e3:.3g}" if p else f"{s} -")
  return ", ".join(parts)


def table(res: dict[str, Any]) -> str:
  head = ["model", "JC ms", "NTVP ms", "SD ms", "auto ms", "auto plan",
          "regret", "paired", "tuned ms", "tuned plan", "tuned regret",
          "auto 1st call s", "method 1st call s", "1st-call ratio",
          "predicted ms (cost model)"]
  lines = ["| " + " | ".join(head) + " |",
           "|" + "---|" * len(head)]
  for c in res.get("cases", []):
    if c.get("skipped"):
      lines.append(f"| {c['name']} | skipped: {c['skipped'][:60]} |")
      continue
    r = c.get("results", {})
    row = [c["name"]] + [_ms(r.get(m)) for m in SHORT] + [
        _ms(r.get("auto")), _plan(r.get("auto", {})), _x(c.get("regret")),
        _x(r.get("auto", {}).get("paired_regret")),
        _ms(r.get("auto_tuned")), _plan(r.get("auto_tuned", {})),
        _x(c.get("tuned_regret")),
        _x(c.get("first_auto", {}).get("first_call_s")),
        _x(c.get("first_method", {}).get("first_call_s")),
        _x(c.get("first_call_ratio")), _predicted(c)]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def markdown(res: dict[str, Any]) -> str:
  """Summary line, targets, and the per-model table."""
  s = res.get("summary", {})

  def line(key, what, target):
    d = s.get(key) or {}
    return (f"* {what}: geomean {_x(d.get('geomean'))}, worst "
            f"{_x(d.get('worst'))} over {d.get('n', 0)} models" +
            (f" (target {target})" if target else ""))

  load = res.get("load_start")
  return "\n".join([
      "### Regret on unseen models, called as users call them "
      "(`regret_unseen`)", "",
      line("regret", "auto, cost model alone", "≤ 1.05, worst ≤ 1.25"),
      line("tuned_regret", "auto, `tune=True`", "≤ 1.02, worst ≤ 1.10"),
      line("first_call_ratio",
           "planning + first call of auto / the chosen method's first call",
           "≤ 2, worst ≤ 3"),
      line("regret_choice", "the cost model's choice alone (the chosen "
           "method's own `ntk` / the fastest; no per-call overhead of auto)",
           ""),
      line("tuned_regret_choice", "the tuner's choice alone", ""),
      "", f"Machine load (1-minute average) at the start: "
      f"{load[0]:.1f}" if load else "", "",
      "Times are medians of interleaved calls of each `ntk` as returned by "
      "`ntk_fn` (no outer `jax.jit`); regret = median(auto) / median(fastest "
      "explicit method); `paired` = median over rounds of the same ratio "
      "within a round. First calls in fresh processes with a fresh cache "
      "directory and the device constants known. JC, NTVP, SD: Jacobian "
      "contraction, NTK-vector products, structured derivatives.",
      "", table(res)])
