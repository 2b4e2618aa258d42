"""The mutant zoo: ``ZooMHA`` (a correct drop-in), one-bug mutants of it, equivalent variants, baselines."""
