"""JAX's persistent compilation cache, kept beside the plan cache.

A plan read from the plan cache in a new process is compiled again unless
JAX keeps its executable too. Where plans are compiled (the auto planner,
the tuner), :func:`use_beside` points JAX's persistent compilation cache at
the plan cache's ``jax/`` folder, unless the user chose a folder already or
turned it off (``AUTONTK_JAX_CACHE=0``, or
``PlanCache(jax_compilation_cache=False)``). Creating a
:class:`~autontk.PlanCache` changes nothing in the process.
"""

from __future__ import annotations

import os
from typing import Any

from autontk import _compat
from autontk.plancache.session import directory_cause, warn_once


def enabled_by_environment() -> bool:
  """``AUTONTK_JAX_CACHE`` is not ``0`` (or ``false``, ``no``, ``off``)."""
  return os.environ.get("AUTONTK_JAX_CACHE", "1").strip().lower() not in (
      "0", "false", "no", "off")


def use_beside(cache: Any) -> None:
  """Points JAX's compilation cache at ``cache.directory / "jax"`` if the
  :class:`~autontk.PlanCache` ``cache`` asks for it and none is set yet.

  >>> import tempfile, autontk
  >>> use_beside(autontk.PlanCache(tempfile.mkdtemp(),
  ...                              jax_compilation_cache=False))
  """
  if not cache.jax_compilation_cache or _compat.compilation_cache_dir():
    return  # off, or set (by the user or an earlier call): leave it
  target = cache.directory / "jax"
  try:
    target.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    warn_once(cache.directory, cache.path, directory_cause(e),
              f"cannot use the directory ({e}): plans will not be "
              "remembered and JAX's compilation cache is off.")
    return
  _compat.enable_compilation_cache(str(target))
