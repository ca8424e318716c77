"""Experiments: hyperparameter sweeps whose trials are ordinary cnnlab runs (Optuna)."""

from cnnlab.experiments.space import SweepSpec, load_sweep
from cnnlab.experiments.sweep import SweepFolder, SweepResult, sweep

__all__ = ["SweepFolder", "SweepResult", "SweepSpec", "load_sweep", "sweep"]
