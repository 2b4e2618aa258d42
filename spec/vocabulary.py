"""The words results are told in: statuses, law families, severities. No torch here: pytest-xdist's
controller renders the matrix from these without importing the laws."""
from __future__ import annotations

from dataclasses import dataclass

STATUSES = ("pass", "fail", "crashed", "hung", "not run", "error", "inconclusive", "deviation", "not claimed", "skipped")
FAILING = ("fail", "crashed", "hung", "not run", "error", "inconclusive")  # statuses that fail the run, worst first
SEVERITIES = {"results": "wrong results on ordinary inputs",
              "edge": "edge cases (empty sequences, fully masked rows, extreme magnitudes)",
              "validation": "input validation"}
NO_CUDA = "CUDA is not available on this machine"


@dataclass(frozen=True)
class Family:
    """A family of laws: its name, the matrix column's header, and the module of ``attnspec.checks`` its laws live in."""

    name: str
    header: str
    module: str
    about: str


# The one list of families: the laws' files, the matrix columns and the documentation follow it, in this order.
FAMILY_LIST = (
    Family("shape", "shp", "shape", "shape, dtype and device of outputs and weights, empty sequences"),
    Family("equivalence", "eqv", "equivalence", "the float64 reference, torch's own module, RoPE at position 0"),
    Family("masking", "mask", "masking", "masked keys, mask forms, fully masked rows"),
    Family("positional", "pos", "positional", "keys hidden by position: the causal flag, sliding windows"),
    Family("permutation", "perm", "permutation", "order-free attention, batch items, relative positions"),
    Family("head-split", "head", "headsplit", "heads as feature blocks, grouped-query heads"),
    Family("numerics", "num", "numerics", "weights are probabilities, large inputs"),
    Family("dropout", "drop", "dropout", "dropout in training and eval"),
    Family("paths", "path", "paths", "flags and layouts that must not change the result"),
    Family("decoding", "dec", "decoding", "incremental decoding through a key/value cache"),
    Family("hygiene", "hyg", "hygiene", "inputs untouched, determinism, no hidden state"),
    Family("bad-input", "bad", "badinput", "invalid configurations and calls raise clear errors"),
)
FAMILIES = tuple(f.name for f in FAMILY_LIST)
FAMILY = {f.name: f for f in FAMILY_LIST}
