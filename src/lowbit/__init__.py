"""lowbit: quantize transformer checkpoints to 2–8 bits, load and save them, run them fast.

    import lowbit
    cfg = lowbit.config("int4", group_size=128)
    model = lowbit.from_pretrained("dir/", quantization=cfg)
    lowbit.save_pretrained(model, "out/")
"""

from lowbit._version import __version__

from lowbit import errors  # noqa: E402
from lowbit import methods  # noqa: E402  (registers the built-in methods; lowbit.methods() lists them)
from lowbit.calibration.runner import quantize_calibrated  # noqa: E402
from lowbit.api import Inspection, LayerInfo, inspect, quantize_  # noqa: E402
from lowbit.config import ComputeDtype, QuantConfig  # noqa: E402
from lowbit.loading.checkpoint import verify_checkpoint as verify  # noqa: E402
from lowbit.loading.convert import quantize_folder  # noqa: E402
from lowbit.loading.pipeline import from_pretrained  # noqa: E402
from lowbit.loading.save import save_pretrained  # noqa: E402
from lowbit.nn import fuse_projections  # noqa: E402
from lowbit.methods.awq import AwqConfig  # noqa: E402
from lowbit.methods.fp8 import Fp8Config  # noqa: E402
from lowbit.methods.gptq import GptqConfig  # noqa: E402
from lowbit.methods.hqq import HqqConfig  # noqa: E402
from lowbit.methods.mxfp4 import Mxfp4Config  # noqa: E402
from lowbit.methods.nf4 import Fp4Config, Nf4Config  # noqa: E402
from lowbit.methods.rtn import RtnConfig  # noqa: E402
from lowbit.methods.smoothquant import SmoothQuantConfig  # noqa: E402
from lowbit.quantizer import Quantizer  # noqa: E402
from lowbit.registry import build_config as config  # noqa: E402
from lowbit.registry import config_from_dict, register_alias, register_method  # noqa: E402



def Int8Config(**fields) -> RtnConfig:  # noqa: N802  (reads like the config class it builds)
    """``rtn`` with the int8 presets (symmetric, per output channel); same as ``lowbit.config("int8", ...)``."""
    return config("int8", **fields)


def Int4Config(**fields) -> RtnConfig:  # noqa: N802
    """``rtn`` with the int4 presets (asymmetric, group 128); same as ``lowbit.config("int4", ...)``."""
    return config("int4", **fields)

__all__ = [
    "AwqConfig", "ComputeDtype", "Fp4Config", "Fp8Config", "GptqConfig", "HqqConfig", "Inspection", "Int4Config", "Int8Config", "LayerInfo",
    "Mxfp4Config", "Nf4Config", "QuantConfig", "Quantizer", "RtnConfig", "SmoothQuantConfig",
    "config", "config_from_dict", "errors", "from_pretrained", "fuse_projections", "inspect", "methods", "quantize_", "quantize_calibrated", "quantize_folder",
    "register_alias", "register_method", "save_pretrained", "verify",
]
