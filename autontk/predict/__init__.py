"""Predictions from kernels: a drop-in for ``neural_tangents.predict``.

Every function takes the train kernel either as an array (factored once,
as in neural-tangents) or as an operator such as :func:`autontk.ntk_operator`
(solved matrix-free with :mod:`autontk.solvers`). ``docs/predict.md`` maps
neural-tangents' calls to these.
"""

from autontk.predict._ensemble import (
    gradient_descent_mse_ensemble as gradient_descent_mse_ensemble)
from autontk.predict._gp import Gaussian as Gaussian
from autontk.predict._gp import gp_inference as gp_inference
from autontk.predict._mse import gradient_descent_mse as gradient_descent_mse
from autontk.predict._mse import max_learning_rate as max_learning_rate
from autontk.predict._ode import ODEState as ODEState
from autontk.predict._ode import gradient_descent as gradient_descent

__all__ = ["gradient_descent_mse", "gradient_descent_mse_ensemble",
           "gp_inference", "gradient_descent", "max_learning_rate",
           "Gaussian", "ODEState"]
