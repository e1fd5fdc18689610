"""Fused projections (q/k/v, gate/up from archs.py): same outputs, no extra memory, saving unchanged."""

import pytest
import torch

import lowbit
from lowbit.nn import QuantLinear
from helpers import contents, logits, make_llama, token_ids

GROUPS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["mlp.gate_proj", "mlp.up_proj"]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_llama(tmp_path_factory.mktemp("llama"))


def load(src, method="int8", **fields):
    return lowbit.from_pretrained(src, lowbit.config(method, **fields))


@pytest.mark.parametrize("method", ["int8", "nf4"])
def test_fused_model_gives_the_same_logits_and_state(src, method):
    model = load(src, method)
    ids = token_ids(batch=2)
    before, state = logits(model, ids), {k: v.clone() for k, v in model.state_dict().items()}
    fused = lowbit.fuse_projections(model)
    assert fused == [f"model.layers.{i}.{{{','.join(g)}}}" for i in range(2) for g in GROUPS]
    torch.testing.assert_close(logits(model, ids), before, rtol=1e-5, atol=1e-5)
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    q = model.model.layers[0].self_attn.q_proj
    assert "fused with k_proj, v_proj" in q.kernel_reason
    assert "fused with" in lowbit.inspect(model).layers[0].reason


def test_members_are_views_of_the_fused_layer(src):
    model = load(src)
    attn = model.model.layers[0].self_attn
    lowbit.fuse_projections(model)
    group, _ = attn.q_proj.fused
    base = group.linear.qweight.untyped_storage().data_ptr()
    for m in (attn.q_proj, attn.k_proj, attn.v_proj):
        assert m.qweight.untyped_storage().data_ptr() == base  # no second copy of the weights
    rows = sum(m.out_features for m in group.members)
    assert group.linear.qweight.shape[0] == rows == 3 * 64


def test_saving_a_fused_model_writes_the_same_folder(src, tmp_path):
    plain, fused = load(src), load(src)
    assert lowbit.fuse_projections(fused)
    lowbit.save_pretrained(plain, tmp_path / "plain")
    lowbit.save_pretrained(fused, tmp_path / "fused")
    assert contents(tmp_path / "plain") == contents(tmp_path / "fused")


def test_each_member_alone_and_other_inputs_still_work(src):
    model = load(src)
    attn = model.model.layers[0].self_attn
    x, y = torch.randn(3, 64), torch.randn(3, 64)
    want = {name: getattr(attn, name)(x) for name in ("q_proj", "k_proj", "v_proj")}
    lowbit.fuse_projections(model)
    torch.testing.assert_close(attn.v_proj(x), want["v_proj"])  # out of order: computes afresh
    torch.testing.assert_close(attn.q_proj(x), want["q_proj"])
    assert attn.k_proj(y).shape == (3, 64)  # another input: computes afresh, not the stale slice
    torch.testing.assert_close(attn.k_proj(x), want["k_proj"])


def test_moving_the_model_undoes_the_fusion(src):
    model = load(src)
    ids = token_ids()
    before = logits(model, ids)
    lowbit.fuse_projections(model)
    model.to("cpu", torch.float32)
    assert all(m.fused is None for m in model.modules() if isinstance(m, QuantLinear))
    torch.testing.assert_close(logits(model, ids), before, rtol=1e-5, atol=1e-5)
    assert len(lowbit.fuse_projections(model)) == 4  # and it can be fused again


def test_groups_whose_members_differ_are_left_alone(src):
    model = load(src)
    model.model.layers[0].self_attn.k_proj.prepare(forced_kernel="reference")  # another kernel than q and v
    fused = lowbit.fuse_projections(model)
    assert "model.layers.0.{self_attn.q_proj,self_attn.k_proj,self_attn.v_proj}" not in fused
    assert len(fused) == 3
    assert model.model.layers[0].self_attn.q_proj.fused is None


def test_kernel_layouts_not_stored_by_rows_are_not_fused(src):
    model = load(src, "int4", group_size=32)  # the CPU int4 kernel packs its own tiles
    if model.model.layers[0].self_attn.q_proj.kernel.name != "cpu_int4":
        pytest.skip("this torch has no CPU int4 kernel: the layers use another kernel")
    assert lowbit.fuse_projections(model) == []


def test_members_that_would_split_a_row_block_are_not_fused(src, monkeypatch):
    model = load(src)
    kernel = type(model.model.layers[0].self_attn.q_proj.kernel)
    monkeypatch.setattr(kernel, "row_block", 128)  # q/k/v have 64 rows each, gate/up 128
    fused = lowbit.fuse_projections(model)
    assert fused == [f"model.layers.{i}.{{mlp.gate_proj,mlp.up_proj}}" for i in range(2)]
    assert model.model.layers[0].self_attn.q_proj.fused is None


def test_architecture_without_groups_fuses_nothing():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    lowbit.quantize_(model, lowbit.config("int8"))
    assert lowbit.fuse_projections(model) == []


@pytest.mark.parametrize("method,kernel", [("int8", "cpu_dot8"), ("int4", "cpu_dot4")])
def test_fused_integer_dot_layers_decode_the_same(src, method, kernel, monkeypatch):
    """The integer-dot kernels keep rows interleaved in blocks of 4: fused members are row slices of those blocks."""
    from lowbit.kernels.cpu import native
    if native.unavailable():
        pytest.skip(f"lowbit's C kernels cannot be built here: {native.unavailable()}")
    monkeypatch.setenv("LOWBIT_KERNEL", kernel)
    model = load(src, method, compute_dtype="float32")
    ids = token_ids(batch=1)[:, :1]  # one token: the kernels' small-M path, not their dense one
    before = logits(model, ids)
    assert len(lowbit.fuse_projections(model)) == 4
    assert model.model.layers[0].self_attn.q_proj.kernel.name == kernel
    torch.testing.assert_close(logits(model, ids), before, rtol=1e-5, atol=1e-5)
