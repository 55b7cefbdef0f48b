"""Errors raised for bad user input (configs, flags, paths)."""


class ConfigError(ValueError):
  """A config field, flag or path that cannot be used as given.

  The message is one line that names the field or flag and says how to fix it; entry
  points print it without a traceback.
  """


class TrainingError(RuntimeError):
  """A run that cannot go on (e.g. a non-finite loss); the message says what was kept."""
