"""Shared test configuration.

Strict dtype or rank promotion would reject the models' own code (user code,
flax/haiku layers broadcast freely), so JAX's defaults stay on.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))



def pytest_collection_modifyitems(config, items):
  if config.getoption("-m"):
    return
  skip = pytest.mark.skip(reason="slow: run with -m slow")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip)
