"""The error types now live at the ground floor (`invmeasure.errors`); re-exported here so
older imports keep working."""

from invmeasure.errors import ConfigError, TrainingError  # noqa: F401
