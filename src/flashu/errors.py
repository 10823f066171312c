"""User-facing errors: one clear line saying what was wrong and what to do.

Anything a user can cause (bad path, bad preset, bad value) raises :class:`FlashuError`; the CLI prints its
message on one line and exits non-zero. Anything else is a bug and keeps its traceback.
"""


class FlashuError(Exception):
    """An error caused by user input, with a message fit to show as is."""


class ConfigError(FlashuError, ValueError):
    """A configuration value is invalid; the message names the field."""


class CheckpointError(FlashuError):
    """A checkpoint is missing, unreadable, truncated or does not match the model."""


class RandomWeightsWarning(UserWarning):
    """A random-weight preset was loaded: its outputs are noise (fine for speed measurements and tests)."""
