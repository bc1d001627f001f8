"""The ``autontk`` command line: its parser and entry point.

Run ``autontk --help`` (or ``python -m autontk.cli --help``) for the
commands; docs/cli.md walks through them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from autontk._version import __version__
from autontk.cli import commands, models
from autontk.cli.errors import CliError
from autontk.route import QUESTIONS

DESCRIPTION = """\
Tune, inspect and cache autontk's NTK plans.

autontk computes empirical NTKs with one of several exact methods and batch
chunkings; implementation="auto" picks one per model signature (model, shapes,
options, device) and remembers it in a plan cache. This command fills and
inspects that cache.

Examples:
  autontk tune mypkg.models:make_mlp          tune one model (see `tune -h`)
  autontk tune ./model.py:build --n1 64       a factory in a file, batch 64
  autontk tune --suite                        calibrate a new accelerator
  autontk tune mypkg.models:make_mlp --routes solve   dense vs matrix-free
  autontk report mypkg.models:make_mlp        candidates, predicted vs measured
  autontk cache ls                            what is cached
  autontk cache export plans.json             move tuned plans to a twin machine
  autontk diagnose mypkg.models:make_mlp      spectrum, ranks, alignment, distance
"""

TUNE_HELP = """\
Time every candidate plan (method × chunking) of one model on this machine's
default device, most promising first, and cache the fastest under the model's
signature. Later calls of ntk_fn(f) with the same model, shapes and options
use it without planning. An interrupted run resumes when run again.
"""

def make_parser() -> argparse.ArgumentParser:
  """The ``autontk`` argument parser (one sub-parser per command)."""
  parser = argparse.ArgumentParser(
      prog="autontk", description=DESCRIPTION,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--cache-dir", metavar="DIR",
                      help="plan cache directory (default: $AUTONTK_CACHE_DIR"
                           ", else your user cache directory)")
  parser.add_argument("--version", action="version",
                      version=f"autontk {__version__}")
  sub = parser.add_subparsers(dest="command", metavar="COMMAND")
  _add_tune(sub)
  _add_report(sub)
  _add_calibrate(sub)
  _add_cache(sub)
  _add_diagnose(sub)
  return parser


def _add_tune(sub) -> None:
  p = sub.add_parser(
      "tune", help="time the candidate plans of a model and cache the best",
      description=TUNE_HELP + "\n" + models.FACTORY_HELP,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("model", nargs="?", metavar="MODEL",
                 help="MODULE:FACTORY returning the model (see above)")
  p.add_argument("--suite", action="store_true",
                 help="tune the bundled suite of small models (calibrates a "
                      "new accelerator) instead of MODEL")
  p.add_argument("--only", nargs="+", metavar="NAME",
                 help="with --suite: only these models")
  models.add_model_options(p)
  p.add_argument("--budget", type=float, default=60.0, metavar="SECONDS",
                 help="time budget per model, compiles included "
                      "(default: 60)")
  p.add_argument("--trials", type=int, metavar="K",
                 help="time at most K candidates per model (default: all)")
  p.add_argument("--no-progress", action="store_true",
                 help="no progress bar")
  p.add_argument("--json", action="store_true", help="print JSON")
  r = p.add_argument_group(
      "routes", "With --routes, time the dense and the matrix-free route of "
      "one kernel question on the NTK of x1 instead of the kernel plans, "
      "beside their predicted times and the route auto picks.")
  r.add_argument("--routes", choices=QUESTIONS, metavar="QUESTION",
                 help="solve ((Θ + λI)⁻¹ Y), times (exp(−tΘ) Y at a few "
                      "t) or eigsh (the top k eigenvalues)")
  r.add_argument("--k", type=int, default=10, help="eigenpairs (default 10)")
  r.add_argument("--rhs", type=int, default=1, metavar="R",
                 help="right-hand sides (default 1)")
  r.add_argument("--tol", type=float, default=1e-4,
                 help="the solvers' tolerance (default 1e-4)")
  r.add_argument("--ridge", type=float, default=1e-3,
                 help="solve's λ over the mean diagonal of Θ (default 1e-3)")
  r.add_argument("--repeats", type=int, default=2,
                 help="timed runs after the compiling one (default 2)")
  p.set_defaults(run=commands.cmd_tune)


def _add_report(sub) -> None:
  p = sub.add_parser(
      "report", help="candidate table of a cached signature or a model",
      description="Show every candidate plan of a model: predicted and "
                  "measured time, FLOPs, peak memory, feasibility, and which "
                  "plan is chosen (*). TARGET is a signature (or its first "
                  "digits, see `autontk cache ls`) or a MODEL as for tune.",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("target", metavar="TARGET",
                 help="SIGNATURE prefix or MODULE:FACTORY")
  models.add_model_options(p)
  p.add_argument("--json", action="store_true", help="print JSON")
  p.add_argument("--plot", metavar="FILE.png",
                 help="also plot predicted vs measured and time vs memory")
  p.set_defaults(run=commands.cmd_report)


def _add_calibrate(sub) -> None:
  p = sub.add_parser(
      "calibrate",
      help="held-out accuracy of the learned timing model on cached timings",
      description="Fit the learned calibration (predicted time from cost "
                  "features) on every timing in the cache for one device "
                  "kind, and report its leave-one-model-out accuracy next to "
                  "the cost model's. Tuned timings accumulate with "
                  "`autontk tune`; `autontk tune --suite` gives a good start.")
  p.add_argument("--device-kind", metavar="KIND",
                 help="device kind to calibrate (default: this machine's)")
  p.add_argument("--json", action="store_true", help="print JSON")
  p.set_defaults(run=commands.cmd_calibrate)


def _add_cache(sub) -> None:
  p = sub.add_parser("cache", help="list, show, clear, export, import plans",
                     description="Manage the plan cache.")
  p.set_defaults(run=lambda a: _missing(p, "an action"))
  csub = p.add_subparsers(dest="cache_action", metavar="ACTION")
  q = csub.add_parser("ls", help="list cached plans, newest first")
  q.add_argument("--json", action="store_true", help="print JSON")
  q = csub.add_parser("show", help="everything about one signature")
  q.add_argument("signature", metavar="SIGNATURE",
                 help="signature or its first digits")
  q.add_argument("--json", action="store_true", help="print JSON")
  q = csub.add_parser("clear", help="delete one plan, or all with --yes")
  q.add_argument("signature", nargs="?", metavar="SIGNATURE")
  q.add_argument("--yes", action="store_true", help="confirm deleting all")
  q = csub.add_parser(
      "export", help="write plans and timings to a JSON file",
      description="Write cached plans (all, or the SIGNATUREs given) and "
                  "their timings to FILE, to import on a machine with the "
                  "same device kind and library versions.")
  q.add_argument("file", metavar="FILE")
  q.add_argument("signatures", nargs="*", metavar="SIGNATURE")
  q = csub.add_parser("import", help="read plans from an exported file",
                      description="Merge an exported FILE into the cache; a "
                                  "tuned plan is never replaced by an "
                                  "untuned one.")
  q.add_argument("file", metavar="FILE")
  for action in csub.choices.values():
    action.set_defaults(run=commands.cmd_cache)


DIAGNOSE_HELP = """\
Print the NTK diagnostics of a model on its inputs x1: top eigenvalues,
condition number, trace, Frobenius norm, effective ranks, and, when the
factory also returns targets "y" ((N,) or (N, C)), the centered kernel-target
alignment, and when it returns a second checkpoint "params_b", the kernel
distance between the two; each for the whole kernel and per parameter group
(the factory's "groups", else one group per layer). Each value says whether
it is exact or an estimate with its error, and which route (dense or
matrix-free) computed it.
"""


def _add_diagnose(sub) -> None:
  p = sub.add_parser(
      "diagnose", help="spectrum, ranks, alignment and distances of an NTK",
      description=DIAGNOSE_HELP + "\n" + models.FACTORY_HELP,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("model", metavar="MODEL",
                 help="MODULE:FACTORY returning the model (see above)")
  models.add_model_options(p)
  p.add_argument("--k", type=int, default=10, metavar="K",
                 help="how many top eigenvalues (default: 10)")
  p.add_argument("--probes", type=int, metavar="P",
                 help="probe vectors of the estimators (default: the "
                      "library's)")
  p.add_argument("--route", choices=("auto", "dense", "matrix-free"),
                 default="auto",
                 help="dense kernel or matrix-free estimators (default: auto)")
  p.add_argument("--memory-budget", type=float, metavar="BYTES",
                 help="bytes a materialised kernel may take")
  p.add_argument("--seed", type=int, default=0, help="the probes' seed")
  p.add_argument("--plot", metavar="FILE.png",
                 help="also plot the spectrum and the per-group distances")
  p.set_defaults(run=commands.cmd_diagnose)


def _missing(parser: argparse.ArgumentParser, what: str) -> int:
  parser.print_help(sys.stderr)
  raise CliError(f"Give {what}.")


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the ``autontk`` console script."""
  parser = make_parser()
  args = parser.parse_args(argv)
  if args.command is None:
    parser.print_help()
    return 0
  try:
    return int(args.run(args) or 0)
  except CliError as e:
    print(f"autontk {args.command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("\nInterrupted; a tuning run resumes where it stopped when run "
          "again.", file=sys.stderr)
    return 130
  except BrokenPipeError:  # `autontk cache ls | head`
    sys.stderr.close()
    return 0
