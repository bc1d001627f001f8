"""Timing compiled callables on the device: warm-up, repeats, interleaving.

The one timing protocol of autontk (the tuner's, and the benchmarks'):

* :func:`time_one` times a callable after its first call (the compile) and
  a warm-up of ``warmup_s`` (a program's first calls after its compile run
  slower: allocator, caches, frequency scaling), repeating until at least
  ``min_time_s`` of measurements and ``min_repeats`` repeats; the score is
  the median, and a repeat more than twice the median is re-timed once (a
  scheduler hiccup is not the kernel's fault). Given ``stop_above_s``, it
  stops as soon as the callable is known to be that slow.
* :func:`time_interleaved` times several callables round by round, each
  round calling each once, so that machine noise (another process,
  frequency changes) falls on all of them alike: the way to decide a close
  call.

Each returns :class:`~autontk.costmodel.measurement.Timing` records. A
callable is timed through :func:`seconds_of` (its result ready on the
device when the clock stops).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable, Hashable, Mapping, TypeVar

import jax

from autontk.costmodel.measurement import Timing

K = TypeVar("K", bound=Hashable)

__all__ = ["Timing", "TimingPolicy", "format_seconds", "seconds_of",
           "time_interleaved", "time_one"]


@dataclasses.dataclass(frozen=True)
class TimingPolicy:
  """How long and how often to time.

  Attributes:
    warmup_s: after the first call (the compile), call for this long before
      timing (at least once).
    min_time_s: time for at least this long in total.
    min_repeats: and at least this many repeats.
    max_repeats: and at most this many (also the most interleaved rounds).
    rounds: interleaved timing runs at least this many rounds.
    round_time_s: and more rounds until this long has passed (4× that
      while the two fastest are within 10 % of each other).
  """

  warmup_s: float = 0.05
  min_time_s: float = 0.05
  min_repeats: int = 3
  max_repeats: int = 1000
  rounds: int = 9
  round_time_s: float = 0.5


def seconds_of(fn: Callable[[], Any]) -> Callable[[], float]:
  """``once() -> seconds`` of one call of ``fn``, its result ready.

  >>> import jax.numpy as jnp
  >>> once = seconds_of(lambda: jnp.ones(3) * 2)
  >>> once() >= 0
  True
  """
  def once() -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0

  return once


def time_one(once: Callable[[], float], policy: TimingPolicy = TimingPolicy(),
             stop_above_s: float | None = None) -> Timing:
  """Times ``once`` (see :func:`seconds_of`): first call, warm-up, repeats.

  Args:
    once: a callable returning the seconds one call took.
    policy: warm-up, repeats and minimum time.
    stop_above_s: stop once the fastest repeat exceeds this (after two
      repeats, or one that is twice as far off, or a warm-up run more than
      twice as slow).

  Returns:
    A :class:`Timing`; its ``compile_s`` is the first call's time beyond
    the median. Raises whatever calling raises.

  >>> t = time_one(lambda: 1e-3, TimingPolicy(warmup_s=0, min_time_s=0))
  >>> (t.median_s, t.repeats)
  (0.001, 3)
  """
  first = once()  # compile and first run
  warm = _warm_up(once, policy.warmup_s)
  if stop_above_s is not None and warm > 2 * stop_above_s:
    # Far slower than the best already: the warm-up run is evidence enough.
    return Timing(median_s=warm, min_s=warm, repeats=1,
                  compile_s=max(first - warm, 0.0), stopped_early=True)
  times, stopped = _repeat(once, policy, stop_above_s)
  med = statistics.median(times)
  return Timing(median_s=med, min_s=min(times), repeats=len(times),
                compile_s=max(first - med, 0.0), stopped_early=stopped)


def time_interleaved(onces: Mapping[K, Callable[[], float]],
                     policy: TimingPolicy = TimingPolicy(), *,
                     deadline: float | None = None,
                     budget_s: float = float("inf")) -> dict[K, Timing]:
  """Times several callables interleaved, round by round.

  Each is called twice first (its compile, unless done, and a warm-up).
  Each round then calls every one once, starting one later than the round
  before, so that none always follows the same one; at least
  ``policy.rounds`` rounds, more until ``policy.round_time_s`` has passed
  (4× that while the two fastest are within 10 % of each other). Past
  ``deadline`` (a ``time.perf_counter()`` value) no new round starts once
  ``policy.rounds`` are done, or sooner if they would take more than a
  tenth of ``budget_s``. The median over rounds is what a user calling the
  function many times gets.

  Args:
    onces: key -> ``once() -> seconds`` (see :func:`seconds_of`).
    policy: rounds and time.
    deadline: a ``time.perf_counter()`` value; see above.
    budget_s: the budget the deadline belongs to.

  Returns:
    key -> :class:`Timing` over the rounds.

  >>> got = time_interleaved({"a": lambda: 1e-3, "b": lambda: 2e-3},
  ...                        TimingPolicy(rounds=3, round_time_s=0))
  >>> got["a"].median_s, got["b"].repeats
  (0.001, 3)
  """
  keys = list(onces)
  first = {k: onces[k]() for k in keys}  # compile (unless done)
  for k in keys:
    onces[k]()  # warm up
  times: dict[K, list[float]] = {k: [] for k in keys}
  t0 = time.perf_counter()
  t_end, extended = t0 + policy.round_time_s, False
  for rounds in range(max(policy.max_repeats, 1)):
    now = time.perf_counter()
    if rounds >= policy.rounds and now >= t_end:
      if extended or not policy.round_time_s or not _close_call(times):
        break
      t_end, extended = t_end + 3 * policy.round_time_s, True
    if rounds and deadline is not None and now >= deadline and (
        rounds >= policy.rounds or
        (now - t0) / rounds * policy.rounds > 0.1 * budget_s):
      # Past the deadline: the minimum rounds still run when they are
      # cheap (a round or two would decide a close call by noise).
      break
    k = rounds % len(keys)
    for key in keys[k:] + keys[:k]:
      times[key].append(onces[key]())
  out = {}
  for key, ts in times.items():
    med = statistics.median(ts)
    out[key] = Timing(median_s=med, min_s=min(ts), repeats=len(ts),
                      compile_s=max(first[key] - med, 0.0))
  return out


def _warm_up(once: Callable[[], float], seconds: float) -> float:
  """Calls ``once`` until ``seconds`` have passed (at least once); returns
  the last call's time."""
  spent, last = 0.0, once()
  while spent + last < seconds:
    spent += last
    last = once()
  return last


def _repeat(once: Callable[[], float], policy: TimingPolicy,
            stop_above_s: float | None = None) -> tuple[list[float], bool]:
  """Repeats until enough time and repeats; re-times outliers."""
  times: list[float] = []
  while len(times) < policy.max_repeats:
    times.append(once())
    # One repeat can be a hiccup: stop on one only when it is far off.
    if stop_above_s is not None and min(times) > stop_above_s * (
        2.0 if len(times) == 1 else 1.0):
      return times, True
    if len(times) >= policy.min_repeats and sum(times) >= policy.min_time_s:
      break
  if len(times) >= 3:
    med = statistics.median(times)
    times = [once() if t > 2 * med else t for t in times]
  return times, False


def _close_call(times: Mapping[Any, list[float]]) -> bool:
  """The two fastest medians are within 10 %: a close call, which needs
  more rounds to be told from noise."""
  meds = sorted(statistics.median(t) for t in times.values() if t)
  return len(meds) >= 2 and meds[1] <= 1.1 * meds[0]


def format_seconds(v: float | None) -> str:
  """``"1.234 ms"`` style (``"-"`` for ``None``).

  >>> format_seconds(0.00125)
  '1.250 ms'
  """
  if v is None:
    return "-"
  if v >= 1:
    return f"{v:.3f} s"
  if v >= 1e-3:
    return f"{v * 1e3:.3f} ms"
  return f"{v * 1e6:.1f} us"
