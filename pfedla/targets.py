"""Objects built from a config node's ``_target_``: the one way models, datasets, partitions and algorithms are located.

``target_class`` finds the class a node names and checks its kind, before any data loads. ``build`` calls it with
the node's keys that its constructor names (``hydra.utils.instantiate``; a null key is unset, so the constructor's
default applies). The other keys of a group belong to the framework (``dataset.fraction``,
``partition.test_fraction``, ...); a key that neither the class nor the framework reads, set to anything but null,
is refused, so an option given to the wrong choice is not silently ignored. A class that takes ``**kwargs`` gets
every key but ``name`` and the framework's.
"""

from __future__ import annotations

import inspect

from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from pfedla.errors import ConfigError


def target_class(node, group: str, base: type, example: str) -> type:
    """The class ``node`` (the ``group`` config node) names in ``_target_``; a subclass of ``base``."""
    target = node.get("_target_")
    try:
        cls = get_class(target) if target else None
    except Exception:  # hydra raises a bare ImportError/ValueError wrapped in its own types
        cls = None
    if not isinstance(cls, type) or not issubclass(cls, base):
        raise ConfigError(f"{group}._target_={target!r} ({group}={node.get('name')}) does not name a subclass of "
                          f"{base.__name__}; give its dotted path, e.g. {group}._target_={example}")
    return cls


def build(node, group: str, base: type, example: str, framework_keys: frozenset[str] = frozenset(), **supplied):
    """An instance of ``node``'s ``_target_`` class, given the node's keys its constructor names plus ``supplied``
    (what the run adds, e.g. the dataset's input shape). ``name`` and ``framework_keys`` are read elsewhere."""
    cls = target_class(node, group, base, example)
    values = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if v is not None}  # null: unset
    parameters = inspect.signature(cls).parameters
    named = {n for n, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - set(supplied)
    own = set(values) - set(framework_keys) - {"_target_", "name"}  # the keys only this choice can read
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    taken = (named | own) - set(supplied) if takes_any else named
    stray = sorted(own - taken)
    if stray:
        raise ConfigError(f"{group}.{stray[0]}={values[stray[0]]!r} is not an option of {group}={node.get('name')} "
                          f"({cls.__name__} takes {', '.join(sorted(named)) or 'none'}); remove it or choose another "
                          f"{group}")
    required = [n for n in sorted(named - set(values)) if parameters[n].default is inspect.Parameter.empty]
    if required:
        raise ConfigError(f"{group}.{required[0]} must be set for {group}={node.get('name')} ({cls.__name__}); set "
                          f"it in conf/{group}/ or on the command line")
    arguments = OmegaConf.create({"_target_": node["_target_"], **{k: v for k, v in values.items() if k in taken}})
    try:
        return instantiate(arguments, **supplied, _convert_="all")
    except Exception as err:  # hydra wraps what the constructor raises; a ConfigError stays one clear line
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        raise
