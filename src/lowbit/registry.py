"""Method registry: name → (config class, quantizer class), plus aliases with preset fields."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

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


def register_method(config_cls: type[QuantConfig], quantizer_cls: type[Quantizer], *, summary: str = "",
                    replace: bool = False) -> Method:
    """Register a method under ``config_cls.method``. Third-party packages call this too."""
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
    if method not in _METHODS:
        raise RegistryError(f"alias {name!r} points at unknown method {method!r}; register the method first")
    if (name in _METHODS or name in _ALIASES) and not replace:
        raise RegistryError(f"method name {name!r} is already registered; pass replace=True to override it")
    alias = Alias(name, method, dict(presets), summary)
    _ALIASES[name] = alias
    return alias


def unregister(name: str) -> None:
    _METHODS.pop(name, None)
    _ALIASES.pop(name, None)


def names() -> list[str]:
    """Every registered method and alias name, sorted."""
    return sorted([*_METHODS, *_ALIASES])


def get(name: str) -> Method:
    """The Method for a name or alias; an unknown name lists the valid ones."""
    if name in _ALIASES:
        name = _ALIASES[name].method
    try:
        return _METHODS[name]
    except KeyError:
        raise RegistryError(f"unknown method {name!r}; expected one of {names()}") from None


def aliases() -> dict[str, Alias]:
    return dict(_ALIASES)


def methods_table() -> dict[str, Method]:
    return dict(_METHODS)


def build_config(name: str, **fields: Any) -> QuantConfig:
    """``lowbit.config``: build a config by method name or alias."""
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
