"""Weights as data: the registry of every file, the resolver that finds and verifies them, and
the safe readers that load them (no code in a weight file ever runs)."""

from .registry import SOURCES, WEIGHTS, WeightFile, weight_file
from .resolve import TEST_WEIGHTS_MARKER, holds_test_weights, resolve, resolve_file
from .sources import ResolvedWeights, WeightSources

__all__ = ["SOURCES", "TEST_WEIGHTS_MARKER", "WEIGHTS", "ResolvedWeights", "WeightFile", "WeightSources",
           "holds_test_weights", "resolve", "resolve_file", "weight_file"]
