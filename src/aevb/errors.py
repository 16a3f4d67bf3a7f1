"""Exceptions raised for bad input. The command line turns each into one line and exit code 2."""


class AevbError(Exception):
    """Base class: a problem with what the user asked for, explained in one line with its fix."""


class DataError(AevbError, ValueError):
    """A data file or array is missing, malformed, or outside the likelihood's support."""


class ConfigError(AevbError, ValueError):
    """An option or configuration value is unknown or inconsistent."""


class RunError(AevbError):
    """A run directory is missing, incomplete, corrupted, or of an unknown format."""


class NumericalError(AevbError, FloatingPointError):
    """Training produced a non-finite bound or non-finite parameters (at a named step)."""
