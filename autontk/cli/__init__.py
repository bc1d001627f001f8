"""The ``autontk`` command: tune models, inspect reports, manage the plan cache.

* :mod:`~autontk.cli.app`: the parser and :func:`main`, the console
  script's entry point;
* :mod:`~autontk.cli.commands`: one ``cmd_<name>`` per sub-command;
* :mod:`~autontk.cli.models`: loading a model factory, its contract, and the
  command line's model options.
"""

from autontk.cli.app import main as main
from autontk.cli.app import make_parser as make_parser
from autontk.cli.errors import CliError as CliError
from autontk.cli.models import build_model as build_model
from autontk.cli.models import load_factory as load_factory
