"""resexp: config-driven experiments with residual networks."""

__version__ = "0.1.0"
