"""Exceptions raised by lowbit.

Every message is one line that names the offending value, what was expected and how to fix it.
"""

from __future__ import annotations


class LowbitError(Exception):
    """Base class of every error lowbit raises on purpose."""


class ConfigError(LowbitError, ValueError):
    """A quantization config is malformed: unknown field, wrong type, out of range, too new.

    ``field`` and ``expected`` (when set) name the config field and its allowed values, so that the command line
    can say the same in terms of its own flags."""

    def __init__(self, message: str = "", *, field: str | None = None, expected: list | None = None) -> None:
        super().__init__(message)
        self.field, self.expected = field, expected


class RegistryError(LowbitError, KeyError):
    """An unknown method name, or a name registered twice."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(LowbitError, OSError):
    """A checkpoint folder or file is missing, truncated, inconsistent or unsafe."""


class FormatError(LowbitError, ValueError):
    """Tensors that do not match the storage layout they claim."""


class DependencyError(LowbitError, RuntimeError):
    """A package or device the method needs is missing."""


class KernelError(LowbitError, RuntimeError):
    """A forced kernel cannot run the layer it was asked to run."""


class CalibrationError(LowbitError, ValueError):
    """Calibration text or a calibration run that cannot give a quantized model (too short, unsupported model)."""


class TrainingError(LowbitError, RuntimeError):
    """A layer or adapter that cannot be trained or merged as asked (no backward, mismatched shapes, wrong target)."""


class LowbitWarning(UserWarning):
    """Base of lowbit's warnings."""


class MissingTokenizerWarning(LowbitWarning):
    """A model folder without tokenizer files: the model loads, text needs a tokenizer from elsewhere."""


class SaveError(LowbitError, OSError):
    """The output location cannot be written safely."""

__all__ = [
    "LowbitError",
    "ConfigError",
    "RegistryError",
    "CheckpointError",
    "FormatError",
    "DependencyError",
    "KernelError",
    "SaveError",
    "CalibrationError",
    "TrainingError",
    "LowbitWarning",
    "MissingTokenizerWarning",
]
