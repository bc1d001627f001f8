"""The benchmark's one interleaved timer: the library's own protocol.

Candidates compared with each other (methods, plans, a function and its
``jax.jit``) are timed the way ``autontk.tune`` confirms a close call
(:func:`autontk.auto.timing.time_interleaved`): after a compile and a
warm-up call, each round calls every candidate once, starting one candidate
later than the round before, so machine noise falls on all alike; at least
``rounds``
rounds, more until ``time_s`` has passed (longer while the two fastest are
within 10 %), at most ``max_rounds``. This module adapts that protocol to
arbitrary calls and keeps every round's times.

>>> stats = interleaved({"a": lambda: 1.0, "b": lambda: 2.0}, rounds=3,
...                     time_s=0.0)
>>> stats["a"]["repeats"]
3
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Hashable

import jax

from autontk.auto.timing import TimingPolicy, time_interleaved


def interleaved(calls: dict[Hashable, Callable[[], Any]], *, rounds: int = 9,
                time_s: float = 0.5, max_rounds: int = 400
                ) -> dict[Hashable, dict[str, Any]]:
  """Times ``calls`` (key -> a call returning arrays) interleaved.

  Args:
    calls: the candidates; each is called as ``call()`` and its result
      waited for (``jax.block_until_ready``).
    rounds: at least this many rounds.
    time_s: and more rounds until this long has passed.
    max_rounds: at most this many rounds.

  Returns:
    Per key: ``median_s`` and ``min_s`` over the rounds, ``repeats`` (the
    rounds) and ``times`` (seconds per round, in round order, so that
    ``times`` of two keys pair up round by round).
  """
  times: dict[Hashable, list[float]] = {k: [] for k in calls}

  def runner(key, call):
    def once() -> float:
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      dt = time.perf_counter() - t0
      times[key].append(dt)
      return dt
    return once

  keys = list(calls)
  policy = TimingPolicy(rounds=rounds, round_time_s=time_s,
                        max_repeats=max_rounds)
  time_interleaved({k: runner(k, c) for k, c in calls.items()}, policy)
  out = {}
  for k in keys:
    ts = times[k][2:]  # the protocol's compile and warm-up calls go first
    out[k] = {"median_s": statistics.median(ts), "min_s": min(ts),
              "repeats": len(ts), "times": ts}
  return out


def interleave(records: list[dict[str, Any]], *, time_s: float = 1.5,
               max_median_s: float = 0.25, rounds: int = 5) -> None:
  """Re-times already measured records interleaved, in place.

  Records with a ``_call`` and a sequential ``median_s`` of at most
  ``max_median_s`` take part (a slow call between fast ones would disturb
  them, and is told apart by its sequential median anyway). Their
  ``median_s`` becomes the interleaved median (the sequential one is kept
  as ``median_seq_s``), ``min_s`` the least of both, and ``repeats`` counts
  both.
  """
  recs = [r for r in records if "_call" in r and
          r.get("median_s") is not None and r["median_s"] <= max_median_s]
  if len(recs) < 2:
    return
  stats = interleaved({i: r["_call"] for i, r in enumerate(recs)},
                      rounds=rounds, time_s=time_s)
  for i, r in enumerate(recs):
    s = stats[i]
    r["median_seq_s"] = r["median_s"]
    r["median_s"] = s["median_s"]
    r["min_s"] = min(r.get("min_s", s["min_s"]), s["min_s"])
    r["repeats"] = r.get("repeats", 0) + s["repeats"]
    r["interleaved_rounds"] = s["repeats"]
