"""Everything that depends on the transformers version, in one place.

Supported: transformers 5.17 to 5.25 (both tested; CI runs tests/hf in a second environment with 5.17).
Between them ``HfQuantizer`` changed: 5.17 has ``get_param_name`` and ``update_tp_plan``/``update_ep_plan``;
5.25 has ``get_new_dtype``, ``get_load_operations``, ``update_parallel_plan`` and ``quantized_element_size``
instead. lowbit's quantizer relies on none of them: its defaults in both versions keep each stored tensor in
the dtype of the shell's meta buffer (what ``QuantHolder`` declares), and the packed size of a layer that
quantizes on load is reported through ``param_element_size``, which both versions call.
"""

from __future__ import annotations

import warnings

from lowbit.errors import DependencyError, LowbitWarning

SUPPORTED = ((5, 17), (5, 25))  # first and last tested minor versions, inclusive
RANGE = "transformers>=5.17,<5.26"


def _minor(version: str) -> tuple[int, int]:
    parts = (version.split("+")[0].split(".") + ["0"])[:2]
    digits = ["".join(c for c in p if c.isdigit()) or "0" for p in parts]
    return int(digits[0]), int(digits[1])


def check_version(version: str | None = None) -> None:
    """A DependencyError naming the version, the range and the fix if transformers is older than the oldest tested
    version; a LowbitWarning (once) if it is newer than the newest tested one, which is then used as it is: refusing
    a release nobody has tried yet would break every install the day it comes out."""
    version = installed_version() if version is None else version
    minor = _minor(version)
    if minor < SUPPORTED[0]:
        raise DependencyError(f"transformers {version} is older than lowbit's transformers integration supports "
                              f"({RANGE}); run: pip install '{RANGE}', or load with lowbit.from_pretrained(path)")
    if minor > SUPPORTED[1] and version not in _warned:
        _warned.add(version)
        warnings.warn(f"transformers {version} is newer than the newest version lowbit's transformers integration was "
                      f"tested with ({RANGE}); if loading fails, run: pip install '{RANGE}'", LowbitWarning,
                      stacklevel=3)


_warned: set[str] = set()


def installed_version() -> str:
    """The version of the transformers that is imported (its ``__version__``)."""
    import transformers

    return transformers.__version__


def conversion_op_base() -> type:
    """The base class of a per-tensor loading operation (``transformers.core_model_loading.ConversionOps`` in both
    versions), imported only when loading: ``core_model_loading`` imports ``modeling_utils``."""
    from transformers.core_model_loading import ConversionOps

    return ConversionOps
