"""Errors meant for people: each names the config key or path and how to fix it."""


class ConfigError(ValueError):
    """A config value is invalid; the message names the key, the value and a valid example."""


class DatasetMissingError(ConfigError):
    """The dataset files are absent and could not be fetched; the message names the path and fixes."""


def check(ok: bool, key: str, value, rule: str, example: str) -> None:
    """``key rule (got value); try key=example`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key} {rule} (got {value!r}); try {key}={example}")


def choice(group: str, value, valid) -> None:
    """``group=value is unknown; valid: ...`` unless ``value`` is one of ``valid``."""
    if value not in valid:
        raise ConfigError(f"{group}={value} is unknown; valid: {', '.join(valid)} (e.g. {group}={valid[0]})")
