"""The persistent plan cache: chosen plans, estimates and timings, in SQLite.

One SQLite database, ``plans.sqlite``, in the cache directory
(``$AUTONTK_CACHE_DIR``, else the platform's user cache directory, e.g.
``~/.cache/autontk`` on Linux). It holds two tables, both keyed by model
signature (see :mod:`autontk.plancache.signature`):

* ``plans``: the plan "auto" uses for a signature, where it came from
  (``"model"`` for the cost model alone, ``"tuned"`` for timings, ``"import"``),
  a summary of the signature, device kind, versions and timestamps.
* ``candidates``: every candidate the planner or the tuner looked at, one
  :class:`~autontk.costmodel.CostEstimate` per row in its own encoding
  (:meth:`~autontk.costmodel.CostEstimate.to_dict`: HLO features, predicted
  and measured seconds, timing, feasibility), keyed by its plan; the
  columns beside it are only what queries select and sort on. The learned
  calibration (:mod:`autontk.costmodel.calibration`) trains on these rows.

Reading and writing go through :class:`~autontk.plancache.session.Database`:
a corrupt, locked or read-only database gives a :class:`PlanCacheWarning`
instead of an error, and never loses data. JAX's persistent compilation cache
lives beside it (``jax/``, see :mod:`~autontk.plancache.compilation`).
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any, Sequence

from autontk import _paths
from autontk._plan import Plan, plan_from_json, plan_to_json
from autontk.costmodel.estimate import CostEstimate
from autontk.plancache import compilation
from autontk.plancache import signature as signature_lib
from autontk.plancache.session import Database, PlanCacheWarning

DB_NAME = "plans.sqlite"
EXPORT_FORMAT = "autontk-plans/1"
_PLAN_SOURCES = ("model", "tuned", "import")

__all__ = ["PlanCache", "PlanCacheWarning", "shared_cache"]

_PLANS_COLUMNS = {
    "signature": str, "plan": str, "describe": str, "source": str,
    "summary": str, "device_kind": str, "backend": str, "versions": str,
    "planning_s": float, "created": float, "updated": float,
}
_CANDIDATE_COLUMNS = {
    "signature": str, "candidate": str, "device_kind": str,
    "predicted_s": float, "measured_s": float, "estimate": str,
}
_CANDIDATE_KEY = ("signature", "candidate")
_SCHEMA = {"plans": (_PLANS_COLUMNS, "signature", ()),
           "candidates": (_CANDIDATE_COLUMNS, _CANDIDATE_KEY,
                          ("device_kind",))}


class PlanCache:
  """Plans and measurements keyed by model signature, shared by processes.

  Args:
    directory: where ``plans.sqlite`` lives; default
      ``$AUTONTK_CACHE_DIR``, else the user cache directory.
    jax_compilation_cache: where plans from this cache are compiled, also
      point JAX's persistent compilation cache at ``directory/jax`` (unless
      the user set one already). Default: on, unless
      ``AUTONTK_JAX_CACHE=0``. Creating the cache changes nothing.
    timeout_s: how long a write waits for another process's write.

  >>> import tempfile, autontk
  >>> cache = autontk.PlanCache(tempfile.mkdtemp(), jax_compilation_cache=False)
  >>> cache.store("ab" * 32, autontk.Plan(autontk.Implementation(1)))
  True
  >>> cache.lookup("ab" * 32).implementation.name
  'JACOBIAN_CONTRACTION'
  """

  def __init__(self, directory: str | os.PathLike | None = None, *,
               jax_compilation_cache: bool | None = None,
               timeout_s: float = 30.0):
    self.directory = (pathlib.Path(directory).expanduser()
                      if directory is not None else _paths.cache_directory())
    self.path = self.directory / DB_NAME
    self.jax_compilation_cache = (compilation.enabled_by_environment()
                                  if jax_compilation_cache is None
                                  else bool(jax_compilation_cache))
    self._db = Database(self.path, _SCHEMA, timeout_s)

  @property
  def timeout_s(self) -> float:
    return self._db.timeout_s

  def __repr__(self) -> str:
    return f"PlanCache({str(self.directory)!r})"

  def _read(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
    return self._db.read(sql, params)

  # Plans --------------------------------------------------------------------

  def lookup(self, signature: Any) -> Plan | None:
    """The cached plan for ``signature`` (a :class:`Signature` or its
    digest), or ``None``."""
    rows = self._read("SELECT plan FROM plans WHERE signature = ?",
                      (_digest(signature),))
    if not rows:
      return None
    try:
      return plan_from_json(rows[0]["plan"])
    except Exception as e:  # noqa: BLE001 - a stale entry must not crash
      self._db.warn("stale", f"ignoring an entry this version cannot read: "
                    f"{e}")
      return None

  def entry(self, signature: Any) -> dict[str, Any] | None:
    """The full ``plans`` row of ``signature`` (JSON columns decoded)."""
    rows = self._read("SELECT * FROM plans WHERE signature = ?",
                      (_digest(signature),))
    return _decode_row(rows[0]) if rows else None

  def source(self, signature: Any) -> str | None:
    """Where the cached plan came from (``"model"``, ``"tuned"``, ...)."""
    rows = self._read("SELECT source FROM plans WHERE signature = ?",
                      (_digest(signature),))
    return rows[0]["source"] if rows else None

  def store(self, signature: Any, plan: Plan, *, source: str = "model",
            candidates: Sequence[CostEstimate] = (),
            planning_s: float | None = None) -> bool:
    """Records the plan for ``signature`` (and candidate rows, if given).

    Args:
      signature: a :class:`Signature` (its summary is stored) or a digest.
      plan: the chosen plan.
      source: ``"model"`` (cost model), ``"tuned"`` (timed), ``"import"``.
      candidates: estimates for :meth:`record_candidates`.
      planning_s: seconds the planner (or tuner) took.

    Returns:
      Whether the write happened (``False`` after a warning).
    """
    if source not in _PLAN_SOURCES:
      raise ValueError(f"`source` must be one of {_PLAN_SOURCES}; got "
                       f"{source!r}.")
    try:
      plan_json = plan_to_json(plan)
    except TypeError as e:
      self._db.warn("encode", str(e))
      return False
    digest = _digest(signature)
    parts = dict(getattr(signature, "parts", {}) or {})
    env = _environment(parts)
    now = time.time()
    row = {
        "signature": digest, "plan": plan_json, "describe": plan.describe(),
        "source": source, "summary": json.dumps(parts, sort_keys=True),
        "device_kind": env["device_kind"], "backend": env["backend"],
        "versions": json.dumps({k: env[k] for k in ("jax", "jaxlib",
                                                    "autontk")}),
        "planning_s": planning_s, "updated": now,
    }
    cand_rows = _candidate_rows(digest, candidates, env["device_kind"])

    def write(db):
      existing = db.execute("SELECT created FROM plans WHERE signature = ?",
                            [digest]).fetchone()
      row["created"] = existing[0] if existing else now
      db["plans"].upsert(row, pk="signature")
      _upsert_candidates(db, cand_rows)

    return self._db.write(write)

  def record_candidates(self, signature: Any,
                        candidates: Sequence[CostEstimate]) -> bool:
    """Adds or updates candidate rows of ``signature``.

    A row without a measured time never erases an earlier measurement.
    """
    digest = _digest(signature)
    env = _environment(dict(getattr(signature, "parts", {}) or {}))
    rows = _candidate_rows(digest, candidates, env["device_kind"])
    if not rows:
      return True
    return self._db.write(lambda db: _upsert_candidates(db, rows))

  def candidates(self, signature: Any) -> list[CostEstimate]:
    """Candidate estimates of ``signature``, fastest measured first
    (source ``"cache"``; rows this version cannot read are skipped)."""
    rows = self._read(
        "SELECT * FROM candidates WHERE signature = ? ORDER BY "
        "measured_s IS NULL, measured_s, predicted_s", (_digest(signature),))
    return [e for e in map(self._estimate_of, rows) if e is not None]

  def measured_times(self, signature: Any) -> dict[Plan, float]:
    """Measured median seconds per plan of ``signature`` (tuned ones)."""
    return {e.plan: e.measured_time for e in self.candidates(signature)
            if e.measured_time is not None}

  def measurements(self, device_kind: str | None = None
                   ) -> list[tuple[str, CostEstimate]]:
    """Every measured candidate, with its signature (for calibration)."""
    sql = "SELECT * FROM candidates WHERE measured_s IS NOT NULL"
    args: tuple = ()
    if device_kind is not None:
      sql += " AND device_kind = ?"
      args = (device_kind,)
    out = []
    for r in self._read(sql + " ORDER BY signature", args):
      e = self._estimate_of(r)
      if e is not None:
        out.append((r["signature"], e))
    return out

  def _estimate_of(self, row: dict[str, Any]) -> CostEstimate | None:
    try:
      return _estimate_of_row(row)
    except Exception as e:  # noqa: BLE001 - a stale row must not crash
      self._db.warn("stale-row", f"ignoring candidate rows this version "
                    f"cannot read ({e})")
      return None

  def entries(self) -> list[dict[str, Any]]:
    """All ``plans`` rows, newest first (JSON columns decoded)."""
    return [_decode_row(r) for r in
            self._read("SELECT * FROM plans ORDER BY updated DESC")]

  def resolve(self, prefix: str) -> str:
    """The full digest starting with ``prefix`` (raises if not exactly one)."""
    prefix = prefix.strip().lower()
    if not prefix or any(c not in "0123456789abcdef" for c in prefix):
      raise ValueError(f"A signature is a hex digest (or its first digits); "
                       f"got {prefix!r}.")
    rows = self._read("SELECT signature FROM plans WHERE signature LIKE ? "
                      "UNION SELECT signature FROM candidates WHERE "
                      "signature LIKE ?", (prefix + "%", prefix + "%"))
    found = sorted({r["signature"] for r in rows})
    if not found:
      raise KeyError(f"No cached signature starts with {prefix!r} in "
                     f"{self.path}. `autontk cache ls` lists them.")
    if len(found) > 1:
      raise KeyError(f"{len(found)} cached signatures start with {prefix!r}; "
                     "give more digits.")
    return found[0]

  def clear(self, signature: Any = None) -> int:
    """Deletes one signature's rows and tuning journal, or everything;
    returns the number of plans deleted."""
    count = {"n": 0}

    def wipe(db):
      if signature is None:
        count["n"] = db.execute("SELECT count(*) FROM plans").fetchone()[0]
        db.execute("DELETE FROM plans")
        db.execute("DELETE FROM candidates")
      else:
        d = _digest(signature)
        count["n"] = db.execute("DELETE FROM plans WHERE signature = ?",
                                [d]).rowcount
        db.execute("DELETE FROM candidates WHERE signature = ?", [d])

    self._db.write(wipe)
    # The tuner's journals would otherwise resume the cleared timings.
    pattern = "*.journal" if signature is None else (
        f"{_digest(signature)}.journal")
    for journal in (self.directory / "tuning").glob(pattern):
      try:
        journal.unlink()
      except OSError as e:
        self._db.warn("journal", f"cannot delete {journal}: {e}")
    return count["n"]

  # Moving plans between machines -----------------------------------------

  def export(self, path: str | os.PathLike,
             signatures: list[str] | None = None) -> int:
    """Writes plans and candidate rows to a JSON file; returns plans written.

    Plans are only valid on the same device kind and library versions,
    which travel with them (they are part of each signature).
    """
    plans = self.entries()
    if signatures is not None:
      wanted = set(signatures)
      plans = [p for p in plans if p["signature"] in wanted]
    doc = {"format": EXPORT_FORMAT, "exported": time.time(), "plans": []}
    for p in plans:
      rows = self._read("SELECT * FROM candidates WHERE signature = ?",
                        (p["signature"],))
      doc["plans"].append({"plan": p, "candidates": rows})
    for item in doc["plans"]:
      item["plan"] = _encode_row(item["plan"])
    pathlib.Path(path).write_text(json.dumps(doc, indent=1, sort_keys=True))
    return len(plans)

  def import_file(self, path: str | os.PathLike) -> int:
    """Reads a file written by :meth:`export`; returns plans imported.

    Tuned plans are kept over imported ones; otherwise newer wins.
    """
    try:
      doc = json.loads(pathlib.Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"Cannot read plan file {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
      raise ValueError(f"{path} is not an autontk plan export (expected "
                       f"format {EXPORT_FORMAT!r}).")
    try:  # validate before writing
      for item in doc["plans"]:
        plan_from_json(item["plan"]["plan"])
        for row in item["candidates"]:
          _estimate_of_row(row)
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{path} holds a plan or candidate this version "
                       f"cannot read: {e!r}") from e
    count = {"n": 0}

    def write(db):
      for item in doc["plans"]:
        row = dict(item["plan"])
        old = db.execute("SELECT source, updated FROM plans WHERE "
                         "signature = ?", [row["signature"]]).fetchone()
        if old and (old[0] == "tuned" and row["source"] != "tuned"
                    or old[1] >= row["updated"]):
          continue
        if row["source"] != "tuned":
          row["source"] = "import"
        db["plans"].upsert(row, pk="signature")
        if item["candidates"]:
          db["candidates"].upsert_all(item["candidates"], pk=_CANDIDATE_KEY)
        count["n"] += 1

    if not self._db.write(write):
      raise OSError(f"Could not write to the plan cache at {self.path}.")
    return count["n"]


def _digest(signature: Any) -> str:
  digest = getattr(signature, "digest", signature)
  if not isinstance(digest, str):
    raise TypeError(f"`signature` must be a Signature or a hex digest; got "
                    f"{type(signature).__name__}.")
  return digest


def _environment(parts: dict[str, Any]) -> dict[str, Any]:
  if all(k in parts for k in ("device_kind", "backend", "jax")):
    return parts
  return {**signature_lib.environment(), **parts}


def _candidate_rows(digest: str, candidates: Sequence[CostEstimate],
                    device_kind: str) -> list[dict[str, Any]]:
  """The ``candidates`` table's rows of some estimates: each estimate in its
  own encoding, keyed by its plan, with the columns queries use."""
  rows = []
  for e in candidates:
    record = e.to_dict()
    del record["plan"]  # the row's key
    rows.append({
        "signature": digest, "candidate": plan_to_json(e.plan),
        "device_kind": device_kind,
        "predicted_s": _float_or_none(e.predicted_time),
        "measured_s": _float_or_none(e.measured_time),
        "estimate": json.dumps(record, sort_keys=True)})
  return rows


def _estimate_of_row(row: dict[str, Any]) -> CostEstimate:
  """Inverse of :func:`_candidate_rows` for one row."""
  record = json.loads(row["estimate"])
  record["plan"] = json.loads(row["candidate"])
  record["source"] = "cache"
  return CostEstimate.from_dict(record)


def _upsert_candidates(db: Any, rows: list[dict[str, Any]]) -> None:
  """Writes candidate rows; a row without a measured time keeps the
  measurement (and timing) a stored row of the same candidate has."""
  for row in rows:
    if row["measured_s"] is None:
      old = db.execute("SELECT estimate FROM candidates WHERE signature = ? "
                       "AND candidate = ? AND measured_s IS NOT NULL",
                       [row["signature"], row["candidate"]]).fetchone()
      if old is not None:
        kept = json.loads(old[0])
        record = {**json.loads(row["estimate"]),
                  "measured_time": kept.get("measured_time"),
                  "timing": kept.get("timing")}
        row = {**row, "measured_s": _float_or_none(record["measured_time"]),
               "estimate": json.dumps(record, sort_keys=True)}
    db["candidates"].upsert(row, pk=_CANDIDATE_KEY)


def _float_or_none(v: Any) -> float | None:
  if v is None:
    return None
  v = float(v)
  return v if v == v and v not in (float("inf"), float("-inf")) else None


_JSON_COLUMNS = ("summary", "versions")


def _decode_row(row: dict[str, Any]) -> dict[str, Any]:
  out = dict(row)
  for k in _JSON_COLUMNS:
    if isinstance(out.get(k), str):
      try:
        out[k] = json.loads(out[k])
      except json.JSONDecodeError:
        pass
  return out


def _encode_row(row: dict[str, Any]) -> dict[str, Any]:
  out = dict(row)
  for k in _JSON_COLUMNS:
    if k in out and not isinstance(out[k], str):
      out[k] = json.dumps(out[k], sort_keys=True)
  return out


_SHARED: dict[pathlib.Path, PlanCache] = {}


def shared_cache() -> PlanCache:
  """The process's :class:`PlanCache` for the current cache directory
  (``$AUTONTK_CACHE_DIR`` is read on every call, so tests and scripts may
  change it)."""
  directory = _paths.cache_directory()
  if directory not in _SHARED:
    _SHARED[directory] = PlanCache(directory)
  return _SHARED[directory]
