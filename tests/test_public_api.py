"""Everything public is importable from the top-level package."""

import autontk

PUBLIC = ["ntk_fn", "nngp_fn", "ntk_vp_fn", "NtkFn", "Implementation", "Plan",
          "BatchChunking", "CostReport", "ntk_tiled", "PlanCache", "tune",
          "TuneOptions", "PlannerOptions", "StructuredConfig",
          "JacobianContractionConfig", "NtkVectorProductsConfig",
          "MissingRuleError", "pntk_fn", "adapters", "ntk_operator",
          "NtkOperator", "MatrixOperator", "solvers", "predict", "linearize",
          "taylor_expand", "empirical_kernel_fn"]

PREDICT = ["gradient_descent_mse", "gradient_descent_mse_ensemble",
           "gp_inference", "gradient_descent", "max_learning_rate",
           "Gaussian", "ODEState"]


def test_public_names():
  for name in PUBLIC:
    assert hasattr(autontk, name), name
  assert autontk.__version__
  for name in PREDICT:
    assert hasattr(autontk.predict, name), name


def test_solver_names():
  for name in ["solve", "matfun", "eigsh", "max_eigenvalue",
               "ConvergenceWarning"]:
    assert hasattr(autontk.solvers, name), name


def test_method_configs_run_through_plans():
  import jax.numpy as jnp
  f = lambda p, x: jnp.tanh(x @ p)
  x, p = jnp.ones((2, 3)), jnp.ones((3, 4))
  ntk = autontk.ntk_fn(f)
  ref = autontk.ntk_fn(f, implementation=1)(x, None, p)
  for plan in [
      autontk.Plan(autontk.Implementation.STRUCTURED_DERIVATIVES,
                   autontk.StructuredConfig(strict=True)),
      autontk.Plan(autontk.Implementation.NTK_VECTOR_PRODUCTS,
                   autontk.NtkVectorProductsConfig(column_chunk=2)),
      autontk.Plan(autontk.Implementation.JACOBIAN_CONTRACTION,
                   autontk.JacobianContractionConfig(mode="fwd"))]:
    assert jnp.allclose(ntk.execute(plan, x, None, p), ref, rtol=1e-5)
