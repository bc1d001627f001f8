"""The benchmark's one model zoo.

* :mod:`bench.zoo.specs`: portable layer specs with a plain-JAX apply, which
  every peer rebuilds (autontk, plain JAX, neural-tangents under jax 0.4.23,
  torch.func); the case-based suites (:mod:`bench.cases`).
* :mod:`bench.zoo.functions`: models written as users write them (plain JAX,
  flax, haiku, equinox).
* :mod:`bench.zoo.stacked`: one network with its layers held four ways.
* :mod:`bench.zoo.scanned`: models whose blocks are scanned over layers.
* :mod:`bench.zoo.families`: the ``machine_speed`` suite's model families
  (attention, an LM with a tied embedding, depthwise convolutions, scanned
  blocks).

This file imports nothing, so that the peers' environments can import
:mod:`bench.zoo.specs` alone.
"""
