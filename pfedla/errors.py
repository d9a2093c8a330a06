"""Errors meant for people: each names the config key or path and how to fix it."""


class ConfigError(ValueError):
    """A config value is invalid; the message names the key, the value and a valid example."""


class DatasetMissingError(ConfigError):
    """The dataset files are absent and could not be fetched; the message names the path and fixes."""
