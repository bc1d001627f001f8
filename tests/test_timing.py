"""The timing protocol: warm-up, repeats, early stop, interleaved rounds."""

import itertools

import jax.numpy as jnp

from autontk.auto import timing
from autontk.auto.timing import TimingPolicy
from autontk.costmodel.measurement import Timing


def _clock(*seconds):
  """A ``once()`` answering the given seconds, then the last one forever."""
  values = itertools.chain(seconds, itertools.repeat(seconds[-1]))
  calls = []

  def once():
    calls.append(1)
    return next(values)

  return once, calls


def test_time_one_warms_up_repeats_and_retimes_outliers():
  # compile 1 s; warm-up 0.1 s; repeats 1, 1, 9 ms (an outlier), then 1 ms
  once, _ = _clock(1.0, 0.1, 1e-3, 1e-3, 9e-3, 1e-3)
  t = timing.time_one(once, TimingPolicy(warmup_s=0.0, min_time_s=0.0))
  assert isinstance(t, Timing)
  assert (t.median_s, t.min_s, t.repeats, t.stopped_early) == (
      1e-3, 1e-3, 3, False)
  assert t.compile_s == 1.0 - 1e-3 and t.confirmed_s is None


def test_time_one_stops_early_when_far_slower():
  once, calls = _clock(1.0, 0.5)
  t = timing.time_one(once, TimingPolicy(min_time_s=10.0), stop_above_s=0.1)
  assert t.stopped_early and t.repeats == 1 and len(calls) == 2


def test_time_interleaved_rotates_and_returns_timings():
  order = []

  def once(key, seconds):
    def call():
      order.append(key)
      return seconds
    return call

  got = timing.time_interleaved(
      {"a": once("a", 1e-3), "b": once("b", 2e-3)},
      TimingPolicy(rounds=3, round_time_s=0.0))
  assert order[4:] == ["a", "b", "b", "a", "a", "b"]
  assert got["a"] == Timing(median_s=1e-3, min_s=1e-3, repeats=3,
                            compile_s=0.0)
  assert got["b"].median_s == 2e-3


def test_seconds_of_times_a_real_call():
  once = timing.seconds_of(lambda: jnp.ones((64, 64)) @ jnp.ones((64, 64)))
  assert 0 < once() < 10
