"""``lowbit.export(..., format="gguf")``: int4 / int8 g32 layers as Q4_0 / Q8_0 in one .gguf file for llama.cpp.
The gguf package's own dequantizer reads the exported blocks to exactly lowbit's weights (q/k rows in llama.cpp's
order); lowbit's GGUF reader reads the file back to the same weights and logits; the Q4_0 / Q8_0 tensors of the
file the gguf package wrote (tests/fixtures/foreign/tiny-llama.gguf) are written again byte for byte; a byte-level
BPE tokenizer becomes llama.cpp's gpt2 vocabulary; what GGUF cannot hold exactly is refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import helpers
import lowbit
from lowbit.errors import LowbitError
from lowbit.nn import QuantLinear

gguf = pytest.importorskip("gguf", reason="the gguf package (in the test extra) writes and reads GGUF files")

FOREIGN = Path(__file__).resolve().parents[1] / "fixtures" / "foreign"
RUN = dict(kernel="reference", compute_dtype="float32")
SYM = {"Q4_0": dict(bits=4), "Q8_0": dict(bits=8)}


def quantized(source: Path, method: str = "rtn", **fields):
    return lowbit.from_pretrained(source, quantization=lowbit.config(method, **fields, **RUN))


def permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter's q/k row order, written out here independently of lowbit's."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return helpers.make_llama(tmp_path_factory.mktemp("src") / "fp32", seed=5)


@pytest.mark.parametrize("kind", list(SYM))
def test_gguf_dequantizer_reads_lowbits_weights_and_lowbit_reads_them_back(kind, source, tmp_path):
    model = quantized(source, group_size=32, symmetric=True, **SYM[kind])
    out = lowbit.export(model, tmp_path / "m.gguf", format="gguf")
    reader = gguf.GGUFReader(str(out))
    stored = {t.name: t for t in reader.tensors}
    heads = {"q_proj": model.config.num_attention_heads, "k_proj": model.config.num_key_value_heads}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert len(layers) == 14
    for name, layer in layers.items():
        t = stored[names.get_name(f"{name}.weight", try_suffixes=(".weight",))]
        assert t.tensor_type.name == kind
        theirs = gguf.quants.dequantize(t.data, t.tensor_type)
        ours = layer.fmt.decode(layer.canonical_tensors(), torch.float32).numpy()
        proj = name.rpartition(".")[2]
        if proj in heads:
            ours = permute(ours, heads[proj])
        assert np.array_equal(theirs, ours), name
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["llama.attention.head_count_kv"].contents() == model.config.num_key_value_heads
    again = lowbit.from_pretrained(out, quantization=lowbit.config("int4", group_size=32, **RUN))
    for name, layer in layers.items():
        back = again.get_submodule(name)
        assert torch.equal(back.fmt.decode(back.canonical_tensors()), layer.fmt.decode(layer.canonical_tensors()))
    ids = helpers.token_ids(12)
    torch.testing.assert_close(helpers.logits(again, ids), helpers.logits(model, ids), rtol=0, atol=0)


def test_the_gguf_writers_q4_0_and_q8_0_blocks_are_written_again_byte_for_byte(tmp_path):
    fixture = FOREIGN / "tiny-llama.gguf"
    model = lowbit.from_pretrained(fixture, quantization=lowbit.config("int4", group_size=32, symmetric=True, **RUN))
    out = lowbit.export(model, tmp_path / "again.gguf", format="gguf")
    theirs = {t.name: t for t in gguf.GGUFReader(str(fixture)).tensors}
    ours = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    lossless = [n for n, t in theirs.items() if t.tensor_type.name in SYM]
    assert len(lossless) == 4
    for name in lossless:
        assert ours[name].tensor_type == theirs[name].tensor_type
        assert np.array_equal(ours[name].data, theirs[name].data), name


def test_a_byte_level_bpe_tokenizer_becomes_llama_cpps_gpt2_vocabulary(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["Ġt"], vocab["he"] = len(vocab), len(vocab) + 1
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "t"), ("h", "e")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    src = helpers.make_llama(tmp_path / "src", seed=2, vocab_size=260)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(src)
    model = quantized(src, group_size=32, symmetric=True, bits=4)
    reader = gguf.GGUFReader(str(lowbit.export(model, tmp_path / "m.gguf", format="gguf")))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == 260 and tokens[:256] == alphabet and tokens[256] == "Ġt"
    assert tokens[258] == "<s>" and types[258] == gguf.TokenType.CONTROL
    assert fields["tokenizer.ggml.bos_token_id"] == 258
    assert types[0] == gguf.TokenType.NORMAL and fields["tokenizer.ggml.merges"] == ["Ġ t", "h e"]


@pytest.mark.parametrize("fields, words", [
    (dict(bits=4, group_size=32), ("zero-points other than 8", "symmetric=True")),
    (dict(bits=4, group_size=64, symmetric=True), ("no GGUF type", "group_size=32")),
    (dict(bits=3, group_size=32, symmetric=True), ("no GGUF type",)),
    (dict(method="nf4"), ("not an integer grid",)),
])
def test_what_gguf_cannot_hold_exactly_is_refused_in_one_line(fields, words, source, tmp_path):
    fields = dict(fields)
    model = quantized(source, fields.pop("method", "rtn"), **fields)
    with pytest.raises(LowbitError) as info:
        lowbit.export(model, tmp_path / "m.gguf", format="gguf")
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    assert not any(tmp_path.iterdir())


def test_a_non_llama_model_a_non_gguf_name_and_a_character_tokenizer_are_refused(source, tmp_path):
    model = quantized(source, group_size=32, symmetric=True, bits=8)
    with pytest.raises(LowbitError, match=r"\.gguf"):
        lowbit.export(model, tmp_path / "m.bin", format="gguf")
    chars = helpers.make_llama_with_tokenizer(tmp_path / "chars", seed=3)
    with pytest.raises(LowbitError, match="byte-level BPE"):
        lowbit.export(quantized(chars, group_size=32, symmetric=True, bits=8), tmp_path / "c.gguf", format="gguf")
    model.config.model_type = "bert"
    with pytest.raises(LowbitError, match="Llama-family"):
        lowbit.export(model, tmp_path / "b.gguf", format="gguf")
    assert not list(tmp_path.glob("*.gguf"))
