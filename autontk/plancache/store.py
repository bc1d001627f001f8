"""The persistent plan cache: chosen plans, estimates and timings, in SQLite.

One SQLite database, ``plans.sqlite``, in the cache directory
(``$AUTONTK_CACHE_DIR``, else the platform's user cache directory, e.g.
``~/.cache/autontk`` on Linux). It holds two tables, both keyed by model
signature (see :mod:`autontk.signature`):

* ``plans``: the plan "auto" uses for a signature, where it came from
  (``"model"`` for the cost model alone, ``"tuned"`` for timings, ``"import"``),
  a summary of the signature, device kind, versions and timestamps.
* ``candidates``: every candidate the planner or the tuner looked at: its
  plan, HLO features (FLOPs, bytes, transcendentals, peak memory, chunk
  count), predicted and measured seconds, feasibility. The learned
  calibration (:mod:`autontk.calibration`) trains on these rows.

JAX's persistent compilation cache lives beside it (``jax/``), so the chosen
plan's executable is not recompiled in a new process either; turn that off
with ``AUTONTK_JAX_CACHE=0`` or ``PlanCache(jax_compilation_cache=False)``.

The cache never stops a computation: WAL mode and a busy timeout let several
processes read and write at once, and a corrupt, locked or read-only database
gives a :class:`PlanCacheWarning` instead of an error. A corrupt file is moved
aside (``plans.sqlite.corrupt-<time>``), never deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import sqlite3
import time
import warnings
from typing import Any, Iterator, Sequence

import sqlite_utils

from autontk import _compat, _paths
from autontk._plan import Plan, plan_from_json, plan_to_json
from autontk.costmodel.estimate import CostEstimate
from autontk.costmodel.features import CostFeatures
from autontk.plancache import signature as signature_lib

DB_NAME = "plans.sqlite"
EXPORT_FORMAT = "autontk-plans/1"
_PLAN_SOURCES = ("model", "tuned", "import", "manual")


class PlanCacheWarning(UserWarning):
  """The plan cache could not be read or written; computation went on."""


_WARNED: set[tuple[str, str]] = set()
"""(directory, cause) pairs already warned about in this process."""


# The cache -------------------------------------------------------------------

_PLANS_COLUMNS = {
    "signature": str, "plan": str, "describe": str, "source": str,
    "summary": str, "device_kind": str, "backend": str, "versions": str,
    "planning_s": float, "created": float, "updated": float,
}
_CANDIDATE_COLUMNS = {
    "signature": str, "candidate": str, "plan": str, "describe": str,
    "method": str, "n_chunks": int, "features": str, "predicted_s": float,
    "measured_s": float, "timing": str, "feasible": int, "reason": str,
    "device_kind": str, "updated": float,
}


class PlanCache:
  """Plans and measurements keyed by model signature, shared by processes.

  Args:
    directory: where ``plans.sqlite`` lives; default
      ``$AUTONTK_CACHE_DIR``, else the user cache directory.
    jax_compilation_cache: also point JAX's persistent compilation cache at
      ``directory/jax`` (unless the user set one already). Default: on,
      unless ``AUTONTK_JAX_CACHE=0``.
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
    self.timeout_s = float(timeout_s)
    self._schema_ready = False
    if jax_compilation_cache is None:
      jax_compilation_cache = os.environ.get(
          "AUTONTK_JAX_CACHE", "1").strip().lower() not in ("0", "false", "no",
                                                            "off")
    if jax_compilation_cache:
      self._enable_jax_cache()

  def __repr__(self) -> str:
    return f"PlanCache({str(self.directory)!r})"

  # Connections and failure handling -----------------------------------------

  def _warn(self, cause: str, message: str) -> None:
    """One warning per cause and directory in a process, whichever
    PlanCache object (or action) meets it."""
    key = (str(self.directory), cause)
    if key in _WARNED:
      return
    _WARNED.add(key)
    warnings.warn(f"autontk plan cache {self.path}: {message}",
                  PlanCacheWarning, stacklevel=4)

  def _connect(self, readonly: bool) -> sqlite3.Connection:
    if readonly:
      if not self.path.exists():
        raise FileNotFoundError(self.path)
      uri = self.path.resolve().as_uri() + "?mode=ro"
      try:
        conn = sqlite3.connect(uri, uri=True, timeout=self.timeout_s,
                               isolation_level=None)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
      except sqlite3.OperationalError:
        # A WAL database in a read-only directory cannot create its shared
        # memory file; read the file as an immutable snapshot instead.
        uri = self.path.resolve().as_uri() + "?mode=ro&immutable=1"
        return sqlite3.connect(uri, uri=True, isolation_level=None)
    self.directory.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(self.path), timeout=self.timeout_s,
                           isolation_level=None)
    return conn

  def _ensure_schema(self, conn: sqlite3.Connection) -> None:
    if self._schema_ready:
      return
    db = sqlite_utils.Database(conn)
    if db.journal_mode != "wal":
      db.enable_wal()
    with _immediate(conn):
      if "plans" not in db.table_names():
        db["plans"].create(_PLANS_COLUMNS, pk="signature")
      if "candidates" not in db.table_names():
        db["candidates"].create(_CANDIDATE_COLUMNS,
                                pk=("signature", "candidate"))
        db["candidates"].create_index(["device_kind"])
    self._schema_ready = True

  def _move_aside(self) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = self.path.with_name(f"{DB_NAME}.corrupt-{stamp}-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
      src = pathlib.Path(str(self.path) + suffix)
      if src.exists():
        src.rename(pathlib.Path(str(target) + suffix))
    self._schema_ready = False
    self._warn("corrupt", f"the database was corrupt; moved it to {target} "
               "and started a new one.")

  @contextlib.contextmanager
  def _session(self, readonly: bool) -> Iterator[sqlite3.Connection | None]:
    """Yields a connection, or ``None`` (after a warning) if unusable."""
    conn = None
    try:
      conn = self._connect(readonly)
      if not readonly:
        self._ensure_schema(conn)
    except FileNotFoundError:
      yield None
      return
    except (sqlite3.Error, OSError) as e:
      if conn is not None:
        conn.close()
      conn = self._recover(e, readonly)
      if conn is None:
        yield None
        return
    try:
      yield conn
    finally:
      conn.close()

  def _recover(self, error: Exception,
               readonly: bool) -> sqlite3.Connection | None:
    if _is_corrupt(error):
      try:
        self._move_aside()
        if readonly:
          return None  # a new, empty cache: nothing to read
        conn = self._connect(readonly=False)
        self._ensure_schema(conn)
        return conn
      except (sqlite3.Error, OSError) as e:
        error = e
    self._report(error, "open")
    return None

  def _report(self, error: Exception, action: str) -> None:
    if _is_corrupt(error):
      self._warn("corrupt", f"the database is corrupt ({error}); "
                 f"could not {action} it.")
    elif _is_locked(error):
      self._warn("locked", f"the database stayed locked for "
                 f"{self.timeout_s:.0f} s; skipped a {action}.")
    elif isinstance(error, OSError):
      self._warn(_directory_cause(error), f"cannot use the directory "
                 f"({error}): plans will not be remembered.")
    elif _is_readonly(error):
      self._warn("readonly", f"cannot {action} (read-only: "
                 f"{error}); plans will not be remembered.")
    else:
      self._warn("error", f"cannot {action}: {error}")

  def _read(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
    for attempt in range(2):
      with self._session(readonly=True) as conn:
        if conn is None:
          return []
        try:
          cur = conn.execute(sql, params)
          names = [c[0] for c in cur.description]
          return [dict(zip(names, row)) for row in cur.fetchall()]
        except sqlite3.Error as e:
          if "no such table" in str(e):
            return []
          error = e
      if attempt == 0 and _is_corrupt(error):
        with self._session(readonly=False) as conn:
          pass  # reopening for writing moves the corrupt file aside
        continue
      self._report(error, "read")
      return []
    return []

  def _write(self, fn) -> bool:
    for _ in range(2):
      with self._session(readonly=False) as conn:
        if conn is None:
          return False
        try:
          db = sqlite_utils.Database(conn)
          with _immediate(conn):
            fn(db)
          return True
        except sqlite3.Error as e:
          error = e
      if _is_corrupt(error):
        self._schema_ready = False
        try:
          self._move_aside()
        except OSError:
          break
        continue
      break
    self._report(error, "write")
    return False

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
      self._warn("stale", f"ignoring an entry this version cannot read: {e}")
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
      self._warn("encode", str(e))
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
      for r in cand_rows:
        db["candidates"].upsert(r, pk=("signature", "candidate"))

    return self._write(write)

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

    def write(db):
      for r in rows:
        db["candidates"].upsert(r, pk=("signature", "candidate"))

    return self._write(write)

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
      self._warn("stale-row", f"ignoring candidate rows this version cannot "
                 f"read ({e})")
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

    self._write(wipe)
    # The tuner's journals would otherwise resume the cleared timings.
    pattern = "*.journal" if signature is None else (
        f"{_digest(signature)}.journal")
    for journal in (self.directory / "tuning").glob(pattern):
      try:
        journal.unlink()
      except OSError as e:
        self._warn("journal", f"cannot delete {journal}: {e}")
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
    count = {"n": 0}

    def write(db):
      for item in doc["plans"]:
        row = dict(item["plan"])
        plan_from_json(row["plan"])  # validate before writing
        old = db.execute("SELECT source, updated FROM plans WHERE "
                         "signature = ?", [row["signature"]]).fetchone()
        if old and (old[0] == "tuned" and row["source"] != "tuned"
                    or old[1] >= row["updated"]):
          continue
        if row["source"] != "tuned":
          row["source"] = "import"
        db["plans"].upsert(row, pk="signature")
        if item["candidates"]:
          db["candidates"].upsert_all(item["candidates"],
                                      pk=("signature", "candidate"))
        count["n"] += 1

    if not self._write(write):
      raise OSError(f"Could not write to the plan cache at {self.path}.")
    return count["n"]

  # JAX's compilation cache --------------------------------------------------

  def _enable_jax_cache(self) -> None:
    if _compat.compilation_cache_dir():
      return  # the user chose one; leave it
    target = self.directory / "jax"
    try:
      target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      self._warn(_directory_cause(e), f"cannot use the directory ({e}): "
                 "plans will not be remembered and JAX's compilation cache "
                 "is off.")
      return
    _compat.enable_compilation_cache(str(target))


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection):
  # BEGIN IMMEDIATE takes the write lock up front, so concurrent writers wait
  # on the busy timeout instead of failing on a read-to-write upgrade.
  conn.execute("BEGIN IMMEDIATE")
  try:
    yield
  except BaseException:
    if conn.in_transaction:
      conn.execute("ROLLBACK")
    raise
  conn.execute("COMMIT")


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
  """The ``candidates`` table's rows of some estimates (the row codec)."""
  now = time.time()
  rows = []
  for e in candidates:
    key = plan_to_json(e.plan)
    row = {
        "signature": digest, "candidate": key, "plan": key,
        "describe": e.plan.describe(),
        "method": e.plan.implementation.name.lower(),
        "n_chunks": int(e.features.blocks),
        "features": json.dumps(e.features.to_row(), sort_keys=True),
        "predicted_s": _float_or_none(e.predicted_time),
        "feasible": int(bool(e.feasible)), "reason": e.reason or "",
        "device_kind": device_kind, "updated": now,
    }
    if e.measured_time is not None:
      row["measured_s"] = _float_or_none(e.measured_time)
      row["timing"] = json.dumps(dict(e.timing or {}), sort_keys=True)
    rows.append(row)
  return rows


def _estimate_of_row(row: dict[str, Any]) -> CostEstimate:
  """Inverse of :func:`_candidate_rows` for one row (raw or decoded)."""
  row = _decode_row(row)
  plan = plan_from_json(row["plan"])
  features = row.get("features")
  features = CostFeatures.from_row(
      features if isinstance(features, dict) else None,
      method=row.get("method") or plan.implementation.name.lower())
  timing = row.get("timing")
  return CostEstimate(
      plan, features, source="cache",
      predicted_time=_float_or_none(row.get("predicted_s")),
      measured_time=_float_or_none(row.get("measured_s")),
      feasible=bool(row.get("feasible", 1)),
      reason=row.get("reason") or None,
      timing=timing if isinstance(timing, dict) else None)


def _float_or_none(v: Any) -> float | None:
  if v is None:
    return None
  v = float(v)
  return v if v == v and v not in (float("inf"), float("-inf")) else None


_JSON_COLUMNS = ("summary", "versions", "features", "timing")


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


def _directory_cause(e: OSError) -> str:
  """The warning cause of a file-system error: one warning for a read-only
  directory and one for an unusable path, whichever operation meets it."""
  return "readonly" if isinstance(e, PermissionError) else "directory"


def _is_corrupt(e: Exception) -> bool:
  msg = str(e).lower()
  return isinstance(e, sqlite3.DatabaseError) and (
      "not a database" in msg or "malformed" in msg or "corrupt" in msg)


def _is_locked(e: Exception) -> bool:
  msg = str(e).lower()
  return "locked" in msg or "busy" in msg


def _is_readonly(e: Exception) -> bool:
  msg = str(e).lower()
  return ("readonly" in msg or "read-only" in msg or "unable to open" in msg
          or "permission" in msg)


_SHARED: dict[pathlib.Path, PlanCache] = {}


def shared_cache() -> PlanCache:
  """The process's :class:`PlanCache` for the current cache directory
  (``$AUTONTK_CACHE_DIR`` is read on every call, so tests and scripts may
  change it)."""
  directory = _paths.cache_directory()
  if directory not in _SHARED:
    _SHARED[directory] = PlanCache(directory)
  return _SHARED[directory]
