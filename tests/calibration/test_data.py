"""Calibration text → token samples: seeded windows, BOS, and the errors for text that cannot calibrate."""

from __future__ import annotations

import pytest
import torch

from lowbit.calibration import calibration_samples, read_calibration_text
from lowbit.errors import CalibrationError, ConfigError


class CharTok:
    """Characters → code points; with ``bos`` it puts id 1 first, as Gemma's tokenizer puts its BOS."""

    def __init__(self, bos: bool = False) -> None:
        self.bos = bos
        self.bos_token_id = 1

    def __call__(self, text: str, add_special_tokens: bool = True):
        ids = [ord(c) % 128 for c in text]
        return {"input_ids": ([1] if self.bos and add_special_tokens else []) + ids}


TEXT = "".join(chr(32 + int(c)) for c in torch.randint(0, 90, (2000,), generator=torch.Generator().manual_seed(0)))


def test_samples_are_seeded_non_overlapping_windows_of_the_text():
    rows = calibration_samples(CharTok(), TEXT, samples=8, seq_len=100, seed=3)
    assert rows.shape == (8, 100)
    ids = torch.tensor([ord(c) % 128 for c in TEXT])
    starts = []
    for row in rows:
        hits = [s for s in range(0, 2000, 100) if torch.equal(ids[s:s + 100], row)]
        assert len(hits) == 1  # each row is one of the 20 aligned windows
        starts.append(hits[0])
    assert len(set(starts)) == 8 and starts == sorted(starts)
    assert torch.equal(rows, calibration_samples(CharTok(), TEXT, samples=8, seq_len=100, seed=3))
    assert not torch.equal(rows, calibration_samples(CharTok(), TEXT, samples=8, seq_len=100, seed=4))


def test_a_bos_tokenizer_gets_bos_first_in_every_sample():
    rows = calibration_samples(CharTok(bos=True), TEXT, samples=4, seq_len=50)
    assert rows.shape == (4, 50)
    assert (rows[:, 0] == 1).all() and (rows[:, 1:] != 1).all()


def test_fewer_windows_than_samples_uses_them_all_with_a_warning():
    with pytest.warns(UserWarning, match="holds 2 windows of 1000 tokens, fewer than samples=5; using 2"):
        rows = calibration_samples(CharTok(), TEXT, samples=5, seq_len=1000)
    assert rows.shape == (2, 1000)


def test_text_shorter_than_one_sample_says_how_much_is_needed():
    with pytest.raises(CalibrationError, match=r"gives 10 tokens; one sample of seq_len=512 needs 512; pass a longer"):
        calibration_samples(CharTok(), "0123456789", samples=4, seq_len=512)


@pytest.mark.parametrize("field, value", [("samples", 0), ("seq_len", 1), ("samples", True), ("samples", 2.5)])
def test_bad_counts_are_config_errors(field, value):
    kwargs = {"samples": 4, "seq_len": 64, field: value}
    with pytest.raises(ConfigError, match=f"{field}={value!r} is invalid; expected an int"):
        calibration_samples(CharTok(), TEXT, **kwargs)


def test_empty_file(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n\n")
    with pytest.raises(CalibrationError, match="empty.txt' is empty; expected UTF-8 text .* pass another --calib"):
        read_calibration_text(tmp_path / "empty.txt")


def test_non_utf8_file(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(CalibrationError, match=r"calibration text file .*latin1.txt' is not valid UTF-8 .*re-encode"):
        read_calibration_text(tmp_path / "latin1.txt")


def test_missing_file(tmp_path):
    with pytest.raises(CalibrationError, match="nope.txt' does not exist"):
        read_calibration_text(tmp_path / "nope.txt")
