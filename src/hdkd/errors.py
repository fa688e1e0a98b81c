"""Errors a user can fix. The command line prints them as one line, without a traceback."""


class HDKDError(Exception):
    """Base class: the message names the file, row, key or option and what is wrong with it."""


class DataError(HDKDError):
    """A dataset path, image, label file or split is unusable."""


class CheckpointError(HDKDError):
    """A checkpoint is unreadable or belongs to another architecture or class count."""


class ConfigError(HDKDError):
    """A config file or command-line option is invalid."""
