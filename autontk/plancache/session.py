"""The plan cache's SQLite database: connections, schema and recovery.

The cache never stops a computation: WAL mode and a busy timeout let several
processes read and write at once, and a corrupt, locked or read-only database
gives one :class:`PlanCacheWarning` per cause and directory in a process
instead of an error. A corrupt file is moved aside
(``plans.sqlite.corrupt-<time>``), never deleted.

:class:`Database` is that policy; the plan API
(:mod:`~autontk.plancache.store`) reads and writes through it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sqlite3
import time
import warnings
from typing import Any, Callable, Iterator, Mapping

import sqlite_utils


class PlanCacheWarning(UserWarning):
  """The plan cache could not be read or written; computation went on."""


_WARNED: set[tuple[str, str]] = set()
"""(directory, cause) pairs already warned about in this process."""


def warn_once(directory: pathlib.Path, path: pathlib.Path, cause: str,
              message: str) -> None:
  """One warning per cause and directory in a process, whichever
  :class:`Database` (or action) meets it."""
  key = (str(directory), cause)
  if key in _WARNED:
    return
  _WARNED.add(key)
  warnings.warn(f"autontk plan cache {path}: {message}", PlanCacheWarning,
                stacklevel=5)


class Database:
  """One SQLite file whose failures degrade to warnings.

  Args:
    path: the database file.
    schema: table name -> ``(columns, primary key, indexed columns)``,
      created on first write.
    timeout_s: how long a write waits for another process's write.
  """

  def __init__(self, path: pathlib.Path,
               schema: Mapping[str, tuple[dict[str, type], Any, tuple]],
               timeout_s: float):
    self.path = path
    self.directory = path.parent
    self.schema = schema
    self.timeout_s = float(timeout_s)
    self._schema_ready = False

  def warn(self, cause: str, message: str) -> None:
    warn_once(self.directory, self.path, cause, message)

  def read(self, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
    """The rows of a query (``[]`` after a warning, or without a file)."""
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
      self.report(error, "read")
      return []
    return []

  def write(self, fn: Callable[[sqlite_utils.Database], None]) -> bool:
    """Runs ``fn(db)`` in one write transaction; whether it happened
    (``False`` after a warning)."""
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
          self._move_aside(error)
        except OSError:
          break
        continue
      break
    self.report(error, "write")
    return False

  def report(self, error: Exception, action: str) -> None:
    """The warning of a failed ``action`` (``"read"``, ``"write"``...)."""
    if _is_corrupt(error):
      self.warn("corrupt", f"the database is corrupt ({error}); "
                f"could not {action} it.")
    elif _is_locked(error):
      self.warn("locked", f"the database stayed locked for "
                f"{self.timeout_s:.0f} s; skipped a {action}.")
    elif isinstance(error, OSError):
      self.warn(directory_cause(error), f"cannot use the directory "
                f"({error}): plans will not be remembered.")
    elif _is_readonly(error):
      self.warn("readonly", f"cannot {action} (read-only: "
                f"{error}); plans will not be remembered.")
    else:
      self.warn("error", f"cannot {action}: {error}")

  # Connections ---------------------------------------------------------------

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
    return sqlite3.connect(str(self.path), timeout=self.timeout_s,
                           isolation_level=None)

  def _ensure_schema(self, conn: sqlite3.Connection) -> None:
    if self._schema_ready:
      return
    db = sqlite_utils.Database(conn)
    if db.journal_mode != "wal":
      db.enable_wal()
    with _immediate(conn):
      for name, (columns, pk, indexed) in self.schema.items():
        if name not in db.table_names():
          db[name].create(columns, pk=pk)
          for column in indexed:
            db[name].create_index([column])
        elif missing := sorted(set(columns) - set(db[name].columns_dict)):
          raise OtherFormatError(f"table {name!r} lacks columns {missing}")
    self._schema_ready = True

  def _move_aside(self, error: Exception) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = self.path.with_name(
        f"{self.path.name}.corrupt-{stamp}-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
      src = pathlib.Path(str(self.path) + suffix)
      if src.exists():
        src.rename(pathlib.Path(str(target) + suffix))
    self._schema_ready = False
    what = ("was written in another format" if isinstance(
        error, OtherFormatError) else "was corrupt")
    self.warn("corrupt", f"the database {what}; moved it to {target} and "
              "started a new one.")

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
        self._move_aside(error)
        if readonly:
          return None  # a new, empty cache: nothing to read
        conn = self._connect(readonly=False)
        self._ensure_schema(conn)
        return conn
      except (sqlite3.Error, OSError) as e:
        error = e
    self.report(error, "open")
    return None


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


def directory_cause(e: OSError) -> str:
  """The warning cause of a file-system error: one warning for a read-only
  directory and one for an unusable path, whichever operation meets it."""
  return "readonly" if isinstance(e, PermissionError) else "directory"


class OtherFormatError(sqlite3.DatabaseError):
  """The database holds the plan cache's tables in another format (columns
  missing): it is moved aside like a corrupt one, never overwritten."""


def _is_corrupt(e: Exception) -> bool:
  msg = str(e).lower()
  return isinstance(e, OtherFormatError) or isinstance(
      e, sqlite3.DatabaseError) and (
      "not a database" in msg or "malformed" in msg or "corrupt" in msg)


def _is_locked(e: Exception) -> bool:
  msg = str(e).lower()
  return "locked" in msg or "busy" in msg


def _is_readonly(e: Exception) -> bool:
  msg = str(e).lower()
  return ("readonly" in msg or "read-only" in msg or "unable to open" in msg
          or "permission" in msg)
