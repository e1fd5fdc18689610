import dataclasses

import pytest
import torch

import lowbit
from lowbit import registry
from lowbit.config import QuantConfig
from lowbit.errors import ConfigError, RegistryError
from lowbit.formats import IntFormat
from lowbit.quantizer import Quantizer


def test_builtin_names():
    assert {"rtn", "int8", "int4"} <= set(lowbit.methods())


def test_unknown_name_lists_valid_ones():
    with pytest.raises(RegistryError) as e:
        lowbit.config("int5")
    assert "int5" in str(e.value) and "int4" in str(e.value) and "rtn" in str(e.value)


def test_taken_name_is_an_error():
    method = registry.get("rtn")
    with pytest.raises(RegistryError, match="already registered"):
        lowbit.register_method(method.config_cls, method.quantizer_cls)
    with pytest.raises(RegistryError, match="already registered"):
        lowbit.register_alias("int4", "rtn", bits=4)


@dataclasses.dataclass(frozen=True)
class TernaryConfig(QuantConfig):
    """Third-party test method: symmetric 8-bit storage of a {-1, 0, 1} * scale grid."""

    method = "test_ternary"
    threshold: float = 0.5


class TernaryQuantizer(Quantizer):
    config_cls = TernaryConfig

    def weight_format(self, name, module):
        return IntFormat(bits=8, group_size=None, symmetric=True)

    def quantize(self, name, weight):
        scale = weight.abs().mean(dim=1, keepdim=True)
        ternary = torch.where(weight.abs() > self.config.threshold * scale, weight.sign() * scale, 0)
        return self.formats[name].encode(ternary)


@pytest.fixture
def ternary():
    lowbit.register_method(TernaryConfig, TernaryQuantizer)
    yield
    registry.unregister("test_ternary")


def test_third_party_method(ternary):
    assert "test_ternary" in lowbit.methods()
    cfg = lowbit.config("test_ternary", threshold=0.7)
    assert lowbit.config_from_dict(cfg.to_dict()) == cfg
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    w = model[0].weight.detach().clone()
    lowbit.quantize_(model, cfg)
    deq = model[0].scales.float() * model[0].qweight.float()
    scale = w.abs().mean(dim=1, keepdim=True)
    expected = torch.where(w.abs() > 0.7 * scale, w.sign() * scale, 0)
    assert torch.allclose(deq, expected, atol=1e-6)
    with pytest.raises(ConfigError, match="threshold"):
        lowbit.config("test_ternary", threshold="high")


def test_replace_allows_override(ternary):
    class Other(TernaryQuantizer):
        pass

    lowbit.register_method(TernaryConfig, Other, replace=True)
    assert registry.get("test_ternary").quantizer_cls is Other


def test_a_field_of_another_method_names_that_method():
    with pytest.raises(ConfigError, match=r"\['iters'\] for method 'int4'.*iters belongs to hqq"):
        lowbit.config("int4", iters=3)


def test_double_quant_on_a_method_without_it():
    with pytest.raises(ConfigError, match=r"\['double_quant'\] for method 'int4'.*double_quant belongs to fp4, nf4"):
        lowbit.config("int4", double_quant=True)
