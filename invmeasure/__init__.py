"""invmeasure: what neural-network training converges to, measured."""

__version__ = "0.1.0"
