import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

import lowbit
from lowbit import registry
from lowbit.config import QuantConfig
from lowbit.errors import ConfigError


def test_alias_equals_rtn_with_bits_preset():
    assert lowbit.config("int4", group_size=128) == lowbit.config("rtn", bits=4, group_size=128)
    int8 = lowbit.config("int8")
    assert (int8.bits, int8.group_size, int8.symmetric) == (8, None, True)
    int4 = lowbit.config("int4")
    assert (int4.bits, int4.group_size, int4.symmetric) == (4, 128, False)


def test_configs_are_frozen():
    cfg = lowbit.config("int4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.bits = 8


def test_to_dict_layout():
    d = lowbit.config("int4", group_size=64).to_dict()
    assert d["quant_method"] == "lowbit" and d["method"] == "rtn" and d["version"] == 1
    assert d["bits"] == 4 and d["group_size"] == 64 and d["symmetric"] is False
    # loading-only fields say how to run, not what is stored
    assert "kernel" not in d and "compute_dtype" not in d


@given(bits=st.sampled_from([4, 8]), group=st.sampled_from([None, 32, 64, 128, 256]), sym=st.booleans(),
       emb=st.booleans(), head=st.booleans(), skip=st.lists(st.sampled_from(["lm_head", "mlp.down_proj", "x"]), max_size=3))
def test_round_trip(bits, group, sym, emb, head, skip):
    cfg = lowbit.config("rtn", bits=bits, group_size=group, symmetric=sym, quantize_embeddings=emb,
                        quantize_lm_head=head, modules_to_not_convert=tuple(skip))
    assert lowbit.config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("change, needle", [
    ({"bogus": 1}, "bogus"),
    ({"bits": "4"}, "'4'"),
    ({"bits": True}, "True"),
    ({"bits": 5}, "5"),
    ({"group_size": 48}, "48"),
    ({"symmetric": "yes"}, "'yes'"),
    ({"modules_to_not_convert": "lm_head"}, "lm_head"),
    ({"version": 99}, "99"),
    ({"version": "1"}, "'1'"),
    ({"quant_method": "gptq"}, "gptq"),
    ({"method": "nope"}, "nope"),
])
def test_from_dict_errors(change, needle):
    d = {**lowbit.config("int4").to_dict(), **change}
    with pytest.raises(ConfigError) as e:
        lowbit.config_from_dict(d)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_newer_version_says_upgrade():
    d = {**lowbit.config("int8").to_dict(), "version": 2}
    with pytest.raises(ConfigError, match="newer.*upgrade"):
        lowbit.config_from_dict(d)


@pytest.mark.parametrize("kwargs, needle", [
    ({"bits": 5}, "bits=5"), ({"group_size": 100}, "100"), ({"nonsense": 1}, "nonsense"),
    ({"compute_dtype": "int8"}, "int8"), ({"strict": 1}, "strict"),
])
def test_constructor_errors(kwargs, needle):
    with pytest.raises(ConfigError) as e:
        lowbit.config("int4", **kwargs)
    assert needle in str(e.value)


def test_enum_fields_accept_strings():
    cfg = lowbit.config("int4", compute_dtype="float32")
    assert cfg.compute_dtype is lowbit.ComputeDtype.FLOAT32


def test_from_dict_rejects_non_dict():
    with pytest.raises(ConfigError, match="list"):
        QuantConfig.from_dict([1, 2])


# ---- every registered method: from_dict(to_dict(c)) == c, through JSON ---------------------------------------------

def _field_strategy(hint, default):
    import enum
    import types
    import typing

    from hypothesis import strategies as st

    options = [h for h in typing.get_args(hint) if h is not type(None)] if typing.get_origin(hint) in (
        typing.Union, types.UnionType) else [hint]
    parts = [st.none()] if len(options) < len(typing.get_args(hint) or (hint,)) else []
    for h in options:
        if h is bool:
            parts.append(st.booleans())
        elif h is int:
            parts.append(st.sampled_from([0, 1, 2, 3, 4, 8, 16, 20, 32, 64, 128, 256, 1000]))
        elif h is float:
            parts.append(st.sampled_from([0.5, 0.7, 1.0, 1.01, 2.0, 10.0]))
        elif isinstance(h, type) and issubclass(h, enum.Enum):
            parts.append(st.sampled_from(list(h)))
        elif h is str:
            parts.append(st.sampled_from(["reference", "cpu_int4"]))
        elif typing.get_origin(h) is tuple:
            parts.append(st.lists(st.sampled_from(["lm_head", "mlp.down_proj", "model.layers.0"]), max_size=3)
                         .map(tuple))
    return st.one_of(st.just(default), *parts)  # the default half the time, so that most draws are valid


@pytest.mark.parametrize("method", sorted(registry.methods_table()))
def test_every_method_config_round_trips(method):
    import dataclasses
    import json
    import typing

    from hypothesis import HealthCheck, assume, given, settings
    from hypothesis import strategies as st

    cls = registry.get(method).config_cls
    hints = typing.get_type_hints(cls)
    fields = {f.name: _field_strategy(hints[f.name], f.default) for f in dataclasses.fields(cls)}

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
    @given(st.fixed_dictionaries(fields))
    def check(values):
        try:
            cfg = cls(**values)
        except ConfigError:
            assume(False)
        data = json.loads(json.dumps(cfg.to_dict()))
        again = lowbit.config_from_dict(data)
        loading = {f: getattr(cfg, f) for f in cls.loading_fields()}
        assert again.replace(**loading) == cfg  # loading-only fields are never saved

    check()


SAVED_FIELDS = {  # the order of quantization_config in config.json: shared fields come from one base class each
    "rtn": ["bits", "group_size", "symmetric"],
    "gptq": ["bits", "group_size", "symmetric", "act_order", "static_groups", "damp", "block_size", "true_sequential",
             "mse"],
    "awq": ["bits", "group_size", "symmetric", "grid", "search_tokens", "duo_scaling", "clip", "clip_grid",
            "clip_max_shrink", "clip_tokens", "clip_skip"],
    "hqq": ["bits", "group_size", "iters", "lp_norm", "beta", "kappa", "optimize_scale"],
    "nf4": ["block_size", "double_quant"],
    "fp4": ["block_size", "double_quant"],
}


@pytest.mark.parametrize("method", sorted(SAVED_FIELDS))
def test_shared_config_fields_keep_the_saved_order(method):
    from lowbit.config import CodebookConfig, IntGroupConfig

    cfg = lowbit.config(method)
    common = ["quant_method", "method", "version", "modules_to_not_convert", "quantize_embeddings", "quantize_lm_head",
              "strict"]
    assert list(cfg.to_dict()) == common + SAVED_FIELDS[method]
    assert isinstance(cfg, CodebookConfig if method in ("nf4", "fp4") else IntGroupConfig)


def test_a_later_field_is_saved_only_when_set():
    """gptq's awq_balance came after folders were written: off, it is not saved (old folders save again byte for
    byte); on, it is saved and read back."""
    assert "awq_balance" not in lowbit.config("gptq").to_dict()
    on = lowbit.config("gptq", awq_balance=True)
    assert on.to_dict()["awq_balance"] is True
    assert lowbit.config_from_dict(on.to_dict()) == on


@pytest.mark.parametrize("method, fields, text", [
    ("rtn", {"group_size": 100}, "rtn.group_size=100 is out of range; expected one of [32, 64, 128, 256] or null"),
    ("awq", {"bits": 6}, "awq.bits=6 is out of range; expected one of [2, 3, 4, 8]"),
    ("hqq", {"group_size": 100}, "hqq.group_size=100 is out of range; expected one of [32, 64, 128, 256]"),
    ("hqq", {"group_size": None}, "hqq.group_size=None has the wrong type; expected an integer"),
    ("fp4", {"block_size": 16}, "fp4.block_size=16 is out of range; expected one of [32, 64, 128, 256]"),
])
def test_shared_config_fields_validate_once(method, fields, text):
    with pytest.raises(ConfigError) as err:
        lowbit.config(method, **fields)
    assert text in str(err.value) and "\n" not in str(err.value)
