"""autontk: the finite-width (empirical) Neural Tangent Kernel, fast.

Implements the three exact algorithms of Novak, Sohl-Dickstein & Schoenholz,
"Fast Finite Width Neural Tangent Kernel" (ICML 2022), on current JAX, and
chooses the fastest one for you.
"""

from autontk import adapters as adapters
from autontk import diagnostics as diagnostics
from autontk import predict as predict
from autontk import solvers as solvers
from autontk._api import nngp_fn as nngp_fn
from autontk._api import ntk_fn as ntk_fn
from autontk._api import ntk_vp_fn as ntk_vp_fn
from autontk._api import pntk_fn as pntk_fn
from autontk._kernel_fn import NtkFn as NtkFn
from autontk._options import Implementation as Implementation
from autontk._plan import Plan as Plan
from autontk._version import __version__ as __version__
from autontk._xla_options import compiler_options as compiler_options
from autontk.auto.planner import PlannerOptions as PlannerOptions
from autontk.auto.report import CostReport as CostReport
from autontk.auto.tuner import TuneOptions as TuneOptions
from autontk.auto.tuner import tune as tune
from autontk.chunking import BatchChunking as BatchChunking
from autontk.empirical_kernel import (
    empirical_kernel_fn as empirical_kernel_fn)
from autontk.methods.jacobian_contraction import (
    JacobianContractionConfig as JacobianContractionConfig)
from autontk.methods.ntk_vector_products import (
    NtkVectorProductsConfig as NtkVectorProductsConfig)
from autontk.methods.structured import StructuredConfig as StructuredConfig
from autontk.methods.registry import UnsupportedJaxError as UnsupportedJaxError
from autontk.methods.structured.rule_table import (
    MissingRuleError as MissingRuleError)
from autontk.operator import MatrixOperator as MatrixOperator
from autontk.operator import NtkOperator as NtkOperator
from autontk.operator import ntk_operator as ntk_operator
from autontk.plancache import PlanCache as PlanCache
from autontk.taylor import linearize as linearize
from autontk.taylor import taylor_expand as taylor_expand
from autontk.tiled import ntk_tiled as ntk_tiled
