"""QuantConfig: the frozen, versioned, allow-listed base of every method's config.

A config serializes to the ``quantization_config`` entry of config.json::

    {"quant_method": "lowbit", "method": "rtn", "version": 1, "bits": 4, ...}

Fields marked ``loading_only`` (the kernel, the compute dtype) say how to *run* a model, not what is
stored, so they are not written and a checkpoint never overrides the caller's choice.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, ClassVar

from lowbit.errors import ConfigError
from lowbit.qtypes import BY_BITS

QUANT_METHOD = "lowbit"
INT_BITS = tuple(sorted(BY_BITS))  # widths of the integer grids: 2, 3, 4, 8
GROUP_SIZES = (32, 64, 128, 256)  # inputs per scale that integer-grid and code-book methods accept


class ComputeDtype(str, enum.Enum):
    """Dtype of the activations inside a quantized layer."""

    AUTO = "auto"  # bf16 on CPUs with bf16 units and on GPUs, else fp32
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


def loading_only(default: Any) -> Any:
    """A field that says how to run the model; never saved, always taken from the caller."""
    return dataclasses.field(default=default, metadata={"loading_only": True})


def saved_when_set(default: Any) -> Any:
    """A field added after folders were written: saved only when it differs from ``default``, so a folder written
    before it existed saves again byte for byte."""
    return dataclasses.field(default=default, metadata={"saved_when_set": True})


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Base of all method configs. Subclasses set ``method`` and ``version`` and add fields."""

    method: ClassVar[str] = ""
    version: ClassVar[int] = 1

    modules_to_not_convert: tuple[str, ...] = ()
    quantize_embeddings: bool = False
    quantize_lm_head: bool = False
    strict: bool = False
    compute_dtype: ComputeDtype = loading_only(ComputeDtype.AUTO)
    kernel: str | None = loading_only(None)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            coerced = _coerce(self, field.name, value, _field_types(type(self))[field.name])
            if coerced is not value:
                object.__setattr__(self, field.name, coerced)
        self.validate()

    def validate(self) -> None:
        """Range checks of a subclass; raise ConfigError."""

    # ---- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"quant_method": QUANT_METHOD, "method": self.method, "version": self.version}
        for field in dataclasses.fields(self):
            if field.metadata.get("loading_only"):
                continue
            value = getattr(self, field.name)
            if field.metadata.get("saved_when_set") and value == field.default:
                continue
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"quantization_config is {type(data).__name__}; expected a JSON object")
        data = dict(data)
        qm = data.pop("quant_method", QUANT_METHOD)
        if qm != QUANT_METHOD:
            raise ConfigError(f"quant_method {qm!r} is not {QUANT_METHOD!r}; this checkpoint was not written by lowbit "
                              "(see lowbit.interop for other formats)")
        method = data.pop("method", cls.method)
        if method != cls.method:
            raise ConfigError(f"method {method!r} does not match {cls.__name__} ({cls.method!r}); use lowbit.config_from_dict")
        version = data.pop("version", cls.version)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigError(f"version {version!r} is not a positive integer; the checkpoint's config.json is damaged")
        if version > cls.version:
            raise ConfigError(f"{cls.method} config version {version} is newer than this lowbit knows ({cls.version}); "
                              "upgrade lowbit: pip install -U lowbit")
        allowed = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("loading_only")}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"unknown field(s) {unknown} for method {cls.method!r}; expected some of {sorted(allowed)}")
        return cls(**data)

    def replace(self, **changes: Any) -> QuantConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def format_fields(cls) -> list[str]:
        """Fields that describe what is stored (all but the loading-only ones)."""
        return [f.name for f in dataclasses.fields(cls) if not f.metadata.get("loading_only")]

    @classmethod
    def loading_fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.metadata.get("loading_only")]


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(cfg: QuantConfig, name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotation ``hint``; JSON lists become tuples, strings become enums."""
    where = f"{cfg.method}.{name}"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(cfg, name, value, option)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}={value!r} has the wrong type; expected a list of strings")
        return tuple(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise ConfigError(f"{where}={value!r} is not valid; expected one of {[m.value for m in hint]}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}={value!r} has the wrong type; expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}={value!r} has the wrong type; expected an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}={value!r} has the wrong type; expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}={value!r} has the wrong type; expected a string")
        return value
    return value


def check_choice(cfg: QuantConfig, name: str, allowed: typing.Iterable[Any]) -> None:
    """Raise ConfigError unless ``getattr(cfg, name)`` is one of ``allowed``."""
    allowed = list(allowed)
    value = getattr(cfg, name)
    if value not in allowed:
        raise ConfigError(f"{cfg.method}.{name}={value!r} is out of range; expected one of {allowed}", field=name,
                          expected=allowed)


# ---- fields shared by several methods ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class IntGroupConfig(QuantConfig):
    """``bits`` and ``group_size`` of a method that stores an integer grid (rtn, gptq, awq, hqq).

    A subclass without per-channel scales redeclares ``group_size`` as a plain ``int`` (it keeps its place in the
    saved field order) and sets ``per_channel = False``."""

    per_channel: ClassVar[bool] = True  # whether group_size may be None

    bits: int = 4
    group_size: int | None = 128  # None: one scale per output channel

    def validate(self) -> None:
        check_choice(self, "bits", INT_BITS)
        if not self.per_channel:
            check_choice(self, "group_size", GROUP_SIZES)
        elif self.group_size is not None and self.group_size not in GROUP_SIZES:
            raise ConfigError(f"{self.method}.group_size={self.group_size!r} is out of range; expected one of "
                              f"{list(GROUP_SIZES)} or null for per-channel scales", field="group_size",
                              expected=[*GROUP_SIZES, None])


@dataclasses.dataclass(frozen=True)
class IntGridConfig(IntGroupConfig):
    """:class:`IntGroupConfig` plus ``symmetric`` (signed codes without a zero-point)."""

    symmetric: bool = False


@dataclasses.dataclass(frozen=True)
class CodebookConfig(QuantConfig):
    """A 4-bit code book (named by the method: ``nf4``, ``fp4``) with one absmax per ``block_size`` inputs,
    optionally double-quantized."""

    block_size: int = 64
    double_quant: bool = False

    def validate(self) -> None:
        check_choice(self, "block_size", GROUP_SIZES)
