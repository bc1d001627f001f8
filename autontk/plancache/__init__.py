"""What autontk remembers between processes: plans keyed by model signature.

* :mod:`~autontk.plancache.signature`: :func:`model_signature`, a stable key
  for "this model, these shapes and options, this device".
* :mod:`~autontk.plancache.store`: :class:`PlanCache`, the SQLite store of
  chosen plans and every candidate's estimate and timing, over
  :mod:`~autontk.plancache.session` (the database and its failure policy).
* :mod:`~autontk.plancache.compilation`: JAX's persistent compilation cache
  beside it, switched on where plans are compiled.
"""

from autontk.plancache.signature import Signature as Signature
from autontk.plancache.signature import model_signature as model_signature
from autontk.plancache.store import PlanCache as PlanCache
from autontk.plancache.session import PlanCacheWarning as PlanCacheWarning
from autontk.plancache.store import shared_cache as shared_cache
