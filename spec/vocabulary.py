"""The words results are told in: statuses, law families, severities. No torch here: pytest-xdist's
controller renders the matrix from these without importing the laws."""

STATUSES = ("pass", "fail", "crashed", "hung", "not run", "error", "inconclusive", "deviation", "not claimed", "skipped")
FAILING = ("fail", "crashed", "hung", "not run", "error", "inconclusive")  # statuses that fail the run, worst first
SEVERITIES = {"results": "wrong results on ordinary inputs",
              "edge": "edge cases (empty sequences, fully masked rows, extreme magnitudes)",
              "validation": "input validation"}
FAMILIES = ("shape", "equivalence", "masking", "permutation", "head-split", "numerics",
            "dropout", "paths", "hygiene", "bad-input")
NO_CUDA = "CUDA is not available on this machine"
