"""Structure and Jacobian rules, one module per primitive family.

Importing this package registers every rule in
:mod:`autontk.methods.structured.rule_table`.
"""

from autontk.methods.structured.rules import elementwise  # noqa: E402,F401
from autontk.methods.structured.rules import linear_algebra  # noqa: E402,F401
from autontk.methods.structured.rules import reductions  # noqa: E402,F401
from autontk.methods.structured.rules import shape  # noqa: E402,F401
