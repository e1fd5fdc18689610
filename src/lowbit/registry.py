"""Method registry: name → (config class, quantizer class), plus aliases with preset fields.

Third-party packages add methods (and kernels) through the entry-point group ``lowbit.methods``: each entry point
names a module that calls ``register_method`` (and ``lowbit.kernels.register_kernel``) when imported, as the
built-in method modules do. ``load_plugins`` imports them once, when ``lowbit.methods`` is imported; a plugin that
fails to import, or takes a name already registered, is a warning naming it and the error, never a crash. A plugin
module imports lowbit's modules (``lowbit.config``, ``lowbit.quantizer``, ``lowbit.formats``, ``lowbit.registry``,
``lowbit.kernels``), not names from the package root, which is still being imported when plugins load. See
tests/fixtures/plugin for a complete one.
"""

from __future__ import annotations

import dataclasses
import warnings
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable

from lowbit.errors import ConfigError, RegistryError

if TYPE_CHECKING:
    from lowbit.config import QuantConfig
    from lowbit.quantizer import Quantizer


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    config_cls: type[QuantConfig]
    quantizer_cls: type[Quantizer]
    summary: str = ""


@dataclasses.dataclass(frozen=True)
class Alias:
    name: str
    method: str
    presets: dict[str, Any]
    summary: str = ""


_METHODS: dict[str, Method] = {}
_ALIASES: dict[str, Alias] = {}
PLUGIN_GROUP = "lowbit.methods"
_PLUGINS: list[str] | None = None  # the entry points loaded, once loading has run
_LOADER: Callable[[], object] | None = None  # fills the table on first use (the package root sets it)


def set_loader(loader: Callable[[], object] | None) -> None:
    """``loader()`` registers the built-in methods and the plugins; it runs once, before the first lookup or
    registration. ``lowbit/__init__.py`` sets it, so ``import lowbit`` stays light until a method is needed."""
    global _LOADER
    _LOADER = loader


def _ensure_loaded() -> None:
    global _LOADER
    if _LOADER is not None:
        loader, _LOADER = _LOADER, None  # a registration made while loading must not load again
        loader()


def register_method(config_cls: type[QuantConfig], quantizer_cls: type[Quantizer], *, summary: str = "",
                    replace: bool = False) -> Method:
    """Register a method under ``config_cls.method``. Third-party packages call this too."""
    _ensure_loaded()
    name = config_cls.method
    if not name or not isinstance(name, str):
        raise RegistryError(f"{config_cls.__name__}.method is {name!r}; set a non-empty method name on the class")
    if (name in _METHODS or name in _ALIASES) and not replace:
        raise RegistryError(f"method name {name!r} is already registered; pass replace=True to override it")
    method = Method(name, config_cls, quantizer_cls, summary or (config_cls.__doc__ or "").strip().splitlines()[0])
    _METHODS[name] = method
    return method


def register_alias(name: str, method: str, *, summary: str = "", replace: bool = False, **presets: Any) -> Alias:
    """``name`` builds ``method``'s config with ``presets`` as defaults (e.g. int4 = rtn with bits=4)."""
    _ensure_loaded()
    if method not in _METHODS:
        raise RegistryError(f"alias {name!r} points at unknown method {method!r}; register the method first")
    if (name in _METHODS or name in _ALIASES) and not replace:
        raise RegistryError(f"method name {name!r} is already registered; pass replace=True to override it")
    alias = Alias(name, method, dict(presets), summary)
    _ALIASES[name] = alias
    return alias


def unregister(name: str) -> None:
    _ensure_loaded()
    _METHODS.pop(name, None)
    _ALIASES.pop(name, None)


def names() -> list[str]:
    """Every registered method and alias name, sorted."""
    _ensure_loaded()
    return sorted([*_METHODS, *_ALIASES])


def get(name: str) -> Method:
    """The Method for a name or alias; an unknown name lists the valid ones."""
    _ensure_loaded()
    if name in _ALIASES:
        name = _ALIASES[name].method
    try:
        return _METHODS[name]
    except KeyError:
        raise RegistryError(f"unknown method {name!r}; expected one of {names()}") from None


def aliases() -> dict[str, Alias]:
    _ensure_loaded()
    return dict(_ALIASES)


def methods_table() -> dict[str, Method]:
    _ensure_loaded()
    return dict(_METHODS)


def build_config(name: str, **fields: Any) -> QuantConfig:
    """``lowbit.config``: build a config by method name or alias."""
    _ensure_loaded()
    if not isinstance(name, str):
        raise ConfigError(f"method name {name!r} is not a string; expected one of {names()}")
    method = get(name)
    presets = _ALIASES[name].presets if name in _ALIASES else {}
    valid = method.config_cls.field_names()
    unknown = sorted(set(fields) - set(valid))
    if unknown:
        elsewhere = {f: [n for n, m in sorted(_METHODS.items()) if f in m.config_cls.field_names()] for f in unknown}
        hint = "; ".join(f"{f} belongs to {', '.join(ms)}" for f, ms in elsewhere.items() if ms)
        raise ConfigError(f"unknown field(s) {unknown} for method {name!r}; expected some of {valid}"
                          + (f" ({hint}: choose that method instead)" if hint else ""))
    return method.config_cls(**{**presets, **fields})


def config_from_dict(data: dict[str, Any]) -> QuantConfig:
    """Rebuild a config from a checkpoint's ``quantization_config``."""
    _ensure_loaded()
    if not isinstance(data, dict):
        raise ConfigError(f"quantization_config is {type(data).__name__}; expected a JSON object")
    name = data.get("method")
    if not isinstance(name, str):
        raise ConfigError(f"quantization_config has method={name!r}; expected one of {names()}")
    try:
        method = get(name)
    except RegistryError as e:
        raise ConfigError(str(e)) from None
    return method.config_cls.from_dict(data)


def load_plugins() -> list[str]:
    """Import every ``lowbit.methods`` entry point (once per process); returns the names of those that loaded.

    A plugin that raises while importing (a missing dependency, a ``RegistryError`` for a name lowbit or
    another plugin already has) is left out with a warning naming the plugin and the error.
    """
    global _PLUGINS
    if _PLUGINS is None:
        _PLUGINS = []
        for ep in entry_points(group=PLUGIN_GROUP):
            try:
                ep.load()
            except Exception as e:  # a broken plugin must not break lowbit: report it and go on
                package = ep.dist.name if ep.dist is not None else "the package that provides it"
                warnings.warn(f"lowbit plugin {ep.name!r} ({ep.value}) was not loaded: {type(e).__name__}: {e}; "
                              f"expected a module that registers its methods; upgrade or uninstall {package}",
                              stacklevel=2)
            else:
                _PLUGINS.append(ep.name)
    return list(_PLUGINS)
