"""Every benchmark, as a suite of ``python -m bench``: the one registry.

A :class:`Suite` has a name, one line saying what it measures, ``run(cfg,
log) -> dict`` (the JSON-able result) and ``markdown(res) -> str`` (its
table); ``figures(out_dir, res) -> str`` (optional) writes files beside the
result and returns Markdown linking them.

>>> list(SUITES)[:3]
['reference', 'scaling', 'regret']
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

from bench import (cg_iterations, compare, diagnostics_accuracy,
                   diagnostics_large, diagnostics_scaling, kernels,
                   machine_speed, overhead, plancache, precision,
                   predict_large, predict_parity, predict_routes, report,
                   regret_unseen, scanned_regret, stacked, tiled,
                   tuned_regret, xla_options)
from bench.config import RunConfig

Result = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Suite:
  """One benchmark suite."""

  name: str
  summary: str
  run: Callable[[RunConfig, Callable[..., None]], Result]
  markdown: Callable[[Result], str]
  figures: Callable[[str, Result], str] | None = None


def _case_suite(name: str, summary: str, run) -> Suite:
  return Suite(name, summary, run, getattr(report, f"{name}_md"),
               functools.partial(report.figures, suite=name))


SUITES: dict[str, Suite] = {s.name: s for s in (
    _case_suite("reference", "reference models: autontk's methods and auto "
                "against neural-tangents, torch.func and plain JAX",
                compare.reference),
    _case_suite("scaling", "MLP FLOPs per NTK entry against width and output "
                "size, against the methods' cost formulas", compare.scaling),
    _case_suite("regret", "auto's regret (cost model, and tuned) against the "
                "fastest explicit method on 14 models", compare.regret),
    _case_suite("memory", "ResNet / ViT / Mixer time and compiled peak memory "
                "under a memory budget", compare.memory),
    Suite("plancache", "a new process's first call on a plan-cache hit "
          "against the chosen method's cached compile", plancache.run,
          plancache.markdown),
    Suite("regret_unseen", "auto's regret and first-call cost on models it "
          "was not tuned on, called as users call them", regret_unseen.run,
          regret_unseen.markdown),
    Suite("scanned_regret", "auto's regret (cost model alone) on unseen "
          "models whose blocks are scanned over layers, before and after",
          scanned_regret.run, scanned_regret.markdown),
    Suite("tuned_regret", "auto with tuning against the fastest explicit "
          "method on the library's bundled model suite", tuned_regret.run,
          tuned_regret.markdown),
    Suite("xla_options", "the library's XLA options (on CPU: YNNPACK for "
          "matrix products alone) against XLA's defaults, every method",
          xla_options.run, xla_options.markdown),
    Suite("stacked", "one network with its layers as separate leaves, an "
          "indexed stack, scan and fori_loop, every method", stacked.run,
          stacked.markdown),
    Suite("kernels", "what wrt=, groups= and the pseudo-NTK cost, and auto's "
          "regret on those kernels", kernels.run, kernels.markdown),
    Suite("precision", "error of float32 kernels under each precision "
          "setting against float64", precision.run, precision.markdown),
    Suite("overhead", "per-call overhead of ntk_fn's functions and ntk_vp_fn "
          "products against jax.jit", overhead.run, overhead.markdown),
    Suite("tiled", "ntk_tiled: multi-device throughput, a big kernel on "
          "disk, and an extrapolation to 50,000 examples", tiled.run,
          tiled.markdown),
    Suite("predict_routes", "dense against matrix-free kernel regression "
          "(1 and 8 right-hand sides), top-10 eigenvalues and gradient flow "
          "as N grows, and auto's route",
          predict_routes.run, predict_routes.markdown,
          predict_routes.figures),
    Suite("cg_iterations", "CG's iterations on NTKs against the worst-case "
          "bound the route chooser scales (the CG_TYPICAL calibration)",
          cg_iterations.run, cg_iterations.markdown),
    Suite("predict_large", "kernel regression of a CNN at N = 50,000 "
          "matrix-free under 2 GiB, and a subset solved both ways in "
          "float64", predict_large.suite_run, predict_large.markdown),
    Suite("predict_parity", "autontk.predict against neural-tangents 0.6.5's "
          "predict on the same kernels (float64): values and time",
          predict_parity.run, predict_parity.markdown),
    Suite("machine_speed", "each method's FLOP rate against a matmul's on "
          "attention, an LM, depthwise convolutions, scanned blocks, an RNN",
          machine_speed.run, machine_speed.markdown),
    Suite("diagnostics_accuracy", "matrix-free kernel diagnostics against "
          "their dense values on an MLP and a CNN, against the probe count",
          diagnostics_accuracy.run, diagnostics_accuracy.markdown,
          diagnostics_accuracy.figures),
    Suite("diagnostics_scaling", "matrix-free diagnostics (top-10 "
          "eigenvalues, effective ranks) against dense + eigh as N grows: "
          "time, peak memory, crossover, auto's route",
          diagnostics_scaling.run, diagnostics_scaling.markdown,
          diagnostics_scaling.figures),
    Suite("diagnostics_large", "condition number, effective rank, "
          "alignment and per-layer kernel distance of a CNN at N = 20,000, "
          "matrix-free, with time and peak memory", diagnostics_large.suite_run,
          diagnostics_large.markdown),
)}
