"""Shared test configuration.

Strict dtype or rank promotion would reject the models' own code (user code,
flax/haiku layers broadcast freely), so JAX's defaults stay on.
"""

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

# Tests never touch the user's plan cache, and JAX's persistent compilation
# cache stays off unless a test turns it on (docs/cli.md).
os.environ.setdefault("AUTONTK_JAX_CACHE", "0")


@pytest.fixture(autouse=True)
def _private_plan_cache(tmp_path_factory, monkeypatch):
  monkeypatch.setenv("AUTONTK_CACHE_DIR",
                     str(tmp_path_factory.mktemp("autontk-cache")))


def pytest_configure(config):
  """Deselects the ``slow`` set unless the ``-m`` expression names it.

  ``-m`` is a single option (the last one given wins), so a default of
  ``-m "not slow"`` in ``addopts`` would be dropped by any other ``-m``:
  ``-m "not subprocess"`` would then run the slow set too. Instead the
  expression given is narrowed here: ``pytest`` and ``pytest -m "not
  subprocess"`` leave the slow set out (reported as deselected, not
  skipped), ``pytest -m slow`` runs only the slow set and ``pytest -m "slow
  or not slow"`` runs everything.
  """
  expr = config.option.markexpr
  if not re.search(r"\bslow\b", expr):
    config.option.markexpr = f"({expr}) and not slow" if expr else "not slow"
