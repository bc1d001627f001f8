"""The error of a command-line mistake."""


class CliError(Exception):
  """A user error: printed without a traceback, exit status 2."""
