"""Shared test configuration.

Strict dtype or rank promotion would reject the models' own code (user code,
flax/haiku layers broadcast freely), so JAX's defaults stay on.
"""

import os
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



def pytest_collection_modifyitems(config, items):
  if config.getoption("-m"):
    return
  skip = pytest.mark.skip(reason="slow: run with -m slow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
