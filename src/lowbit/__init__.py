"""lowbit: quantize transformer checkpoints to 2–8 bits, load and save them, run them fast.

    import lowbit
    cfg = lowbit.config("int4", group_size=128)
    model = lowbit.from_pretrained("dir/", quantization=cfg)
    lowbit.save_pretrained(model, "out/")

``import lowbit`` is light: the public names below are imported on first use (PEP 562), so the command line
starts without torch. The method registry loads the built-in methods and the plugins the first time it is asked
about a name (``registry.set_loader`` below), whichever module asks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from lowbit import errors, registry
from lowbit._version import __version__
from lowbit.config import ComputeDtype, QuantConfig  # light; also binds the module before `config` below rebinds
from lowbit.hf import install as install_hf  # light: an import hook, transformers is not imported

if TYPE_CHECKING:
    from lowbit import methods
    from lowbit.api import Inspection, LayerInfo, inspect, quantize_
    from lowbit.calibration.runner import quantize_calibrated
    from lowbit.exports import export
    from lowbit.fitting.run import fit
    from lowbit.loading.verify import verify_folder as verify
    from lowbit.loading.convert import quantize_folder
    from lowbit.loading.pipeline import from_pretrained
    from lowbit.loading.save import save_pretrained
    from lowbit.methods.awq import AwqConfig
    from lowbit.methods.fp8 import Fp8Config
    from lowbit.methods.gptq import GptqConfig
    from lowbit.methods.hqq import HqqConfig
    from lowbit.methods.mxfp4 import Mxfp4Config
    from lowbit.methods.nf4 import Fp4Config, Nf4Config
    from lowbit.methods.rtn import RtnConfig
    from lowbit.methods.smoothquant import SmoothQuantConfig
    from lowbit.hf.config import HfQuantConfig
    from lowbit.nn import fuse_projections
    from lowbit.generation import Decoder, compile_for_decode
    from lowbit.quantizer import Quantizer
    from lowbit.textgen import Generation, generate

# public name -> (module, attribute in it; None for the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "methods": ("lowbit.methods", None),
    "quantize_calibrated": ("lowbit.calibration.runner", "quantize_calibrated"),
    "Inspection": ("lowbit.api", "Inspection"), "LayerInfo": ("lowbit.api", "LayerInfo"),
    "inspect": ("lowbit.api", "inspect"), "quantize_": ("lowbit.api", "quantize_"),
    "verify": ("lowbit.loading.verify", "verify_folder"),
    "export": ("lowbit.exports", "export"),
    "fit": ("lowbit.fitting.run", "fit"),
    "quantize_folder": ("lowbit.loading.convert", "quantize_folder"),
    "from_pretrained": ("lowbit.loading.pipeline", "from_pretrained"),
    "save_pretrained": ("lowbit.loading.save", "save_pretrained"),
    "fuse_projections": ("lowbit.nn", "fuse_projections"),
    "compile_for_decode": ("lowbit.generation", "compile_for_decode"), "Decoder": ("lowbit.generation", "Decoder"),
    "AwqConfig": ("lowbit.methods.awq", "AwqConfig"), "Fp8Config": ("lowbit.methods.fp8", "Fp8Config"),
    "GptqConfig": ("lowbit.methods.gptq", "GptqConfig"), "HqqConfig": ("lowbit.methods.hqq", "HqqConfig"),
    "Mxfp4Config": ("lowbit.methods.mxfp4", "Mxfp4Config"), "Fp4Config": ("lowbit.methods.nf4", "Fp4Config"),
    "Nf4Config": ("lowbit.methods.nf4", "Nf4Config"), "RtnConfig": ("lowbit.methods.rtn", "RtnConfig"),
    "SmoothQuantConfig": ("lowbit.methods.smoothquant", "SmoothQuantConfig"),
    "Quantizer": ("lowbit.quantizer", "Quantizer"),
    "generate": ("lowbit.textgen", "generate"), "Generation": ("lowbit.textgen", "Generation"),
    "HfQuantConfig": ("lowbit.hf.config", "HfQuantConfig"),  # imports transformers' quantization configs
}

config = registry.build_config  # the function, not the lowbit.config module imported above
config_from_dict = registry.config_from_dict
register_alias = registry.register_alias
register_method = registry.register_method
registry.set_loader(lambda: importlib.import_module("lowbit.methods"))  # built-ins, then plugins
install_hf()  # transformers loads lowbit folders once its quantizer table is imported (lowbit/hf/__init__.py)
del install_hf


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'lowbit' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def Int8Config(**fields) -> RtnConfig:  # noqa: N802  (reads like the config class it builds)
    """``rtn`` with the int8 presets (symmetric, per output channel); same as ``lowbit.config("int8", ...)``."""
    return config("int8", **fields)


def Int4Config(**fields) -> RtnConfig:  # noqa: N802
    """``rtn`` with the int4 presets (asymmetric, group 128); same as ``lowbit.config("int4", ...)``."""
    return config("int4", **fields)


__all__ = [
    "AwqConfig", "ComputeDtype", "Decoder", "Fp4Config", "Fp8Config", "Generation", "GptqConfig", "HfQuantConfig", "HqqConfig", "Inspection", "Int4Config", "Int8Config", "LayerInfo",
    "Mxfp4Config", "Nf4Config", "QuantConfig", "Quantizer", "RtnConfig", "SmoothQuantConfig",
    "compile_for_decode", "config", "config_from_dict", "errors", "from_pretrained", "fuse_projections", "generate", "inspect", "methods", "quantize_", "quantize_calibrated", "quantize_folder",
    "register_alias", "register_method", "save_pretrained", "verify",
]
