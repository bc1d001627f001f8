"""Structure and Jacobian rules, one module per primitive family.

Importing this package registers every rule in
:mod:`autontk.methods.structured.rule_table`.
"""
