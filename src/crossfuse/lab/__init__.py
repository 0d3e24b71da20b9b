"""The lab: one experiment per principle, each returning a `Result` record."""

from crossfuse.lab.result import EXPERIMENTS, SIZES, Result, Table, load_experiment

__all__ = ["EXPERIMENTS", "SIZES", "Result", "Table", "load_experiment"]
