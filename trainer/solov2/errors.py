"""Errors caused by user input. Their messages name the offending field or file; the CLI prints them
in one line (exit status 2) instead of a stack trace."""


class UserError(Exception):
    """Bad input from the user: a config, a file, a ground-truth batch."""


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used; the message starts with the dotted field name."""


class GroundTruthError(UserError, ValueError):
    """A ground-truth batch that the model cannot train on; the message names the field."""


class WeightsError(UserError, RuntimeError):
    """Weights that cannot be loaded: missing file, unreadable, or mismatched keys or shapes."""


class DataError(UserError, ValueError):
    """A data set that cannot be used: a missing or corrupt file, or annotations that do not fit the config."""
