"""Benchmarks of autontk.ntk_tiled (see README.md in this folder)."""
