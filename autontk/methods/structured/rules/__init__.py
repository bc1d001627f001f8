"""Structure and Jacobian rules, one module per primitive family.

Importing this package registers every rule in
:mod:`autontk.methods.structured.rule_table`.
"""

from autontk.methods.structured.rules import depthwise  # noqa: F401
from autontk.methods.structured.rules import elementwise  # noqa: F401
from autontk.methods.structured.rules import linear_algebra  # noqa: F401
from autontk.methods.structured.rules import reductions  # noqa: F401
from autontk.methods.structured.rules import shape  # noqa: F401
