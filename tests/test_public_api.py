"""Everything public is importable from the top-level package."""

import autontk

PUBLIC = ["ntk_fn", "nngp_fn", "ntk_vp_fn", "NtkFn", "Implementation", "Plan",
          "BatchChunking", "CostReport", "ntk_tiled", "PlanCache", "tune"]


def test_public_names():
  for name in PUBLIC:
    assert hasattr(autontk, name), name
  assert autontk.__version__
