"""Everything that depends on the transformers version, in one place.

Supported: transformers 5.17 to 5.25 (both tested; CI runs tests/hf in a second environment with 5.17).
Between them ``HfQuantizer`` changed: 5.17 has ``get_param_name`` and ``update_tp_plan``/``update_ep_plan``;
5.25 has ``get_new_dtype``, ``get_load_operations``, ``update_parallel_plan`` and ``quantized_element_size``
instead. lowbit's quantizer relies on none of them: its defaults in both versions keep each stored tensor in
the dtype of the shell's meta buffer (what ``QuantHolder`` declares), and the packed size of a layer that
quantizes on load is reported through ``param_element_size``, which both versions call.
"""

from __future__ import annotations

from lowbit.errors import DependencyError

SUPPORTED = ((5, 17), (5, 25))  # first and last tested minor versions, inclusive
RANGE = "transformers>=5.17,<5.26"


def _minor(version: str) -> tuple[int, int]:
    parts = (version.split("+")[0].split(".") + ["0"])[:2]
    digits = ["".join(c for c in p if c.isdigit()) or "0" for p in parts]
    return int(digits[0]), int(digits[1])


def check_version(version: str | None = None) -> None:
    """A DependencyError naming the version, the range and the fix, unless transformers is in the range."""
    if version is None:
        import transformers

        version = transformers.__version__
    if not SUPPORTED[0] <= _minor(version) <= SUPPORTED[1]:
        raise DependencyError(f"transformers {version} is outside the range lowbit's transformers integration supports "
                              f"({RANGE}); run: pip install '{RANGE}', or load with lowbit.from_pretrained(path)")


def conversion_op_base() -> type:
    """The base class of a per-tensor loading operation (``transformers.core_model_loading.ConversionOps`` in both
    versions), imported only when loading: ``core_model_loading`` imports ``modeling_utils``."""
    from transformers.core_model_loading import ConversionOps

    return ConversionOps
