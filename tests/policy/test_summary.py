"""worker.summary: parsing autoresearch's end-of-run block, and judging its val_bpb."""

from __future__ import annotations

import math

import pytest

from worker.summary import SUMMARY_KEYS, is_valid, parse_summary

BLOCK = """---
val_bpb:          0.997900
training_seconds: 300.1
total_seconds:    325.9
peak_vram_mb:     45060.2
mfu_percent:      39.80
total_tokens_M:   499.6
num_steps:        953
num_params_M:     50.3
depth:            8
"""


def test_valid_block_parses_every_key_with_types() -> None:
    s = parse_summary("step 00953 | loss 3.1\n" + BLOCK)
    assert s is not None
    assert tuple(s) == SUMMARY_KEYS
    assert s["val_bpb"] == pytest.approx(0.9979) and isinstance(s["val_bpb"], float)
    assert s["num_steps"] == 953 and isinstance(s["num_steps"], int)
    assert s["depth"] == 8
    assert s["peak_vram_mb"] == pytest.approx(45060.2)
    assert is_valid(s) is None


def test_last_block_wins() -> None:
    text = BLOCK.replace("0.997900", "1.500000") + "more training...\n" + BLOCK
    assert parse_summary(text)["val_bpb"] == pytest.approx(0.9979)  # type: ignore[index]


def test_trailing_separator_without_entries_falls_back_to_the_block_before() -> None:
    text = BLOCK + "done\n---\n\nbye\n"
    assert parse_summary(text)["val_bpb"] == pytest.approx(0.9979)  # type: ignore[index]


def test_missing_block_is_none() -> None:
    assert parse_summary("") is None
    assert parse_summary("step 1\nstep 2\nval_bpb: 0.9\n") is None  # no --- line
    assert parse_summary("---\n\nval_bpb: 0.9\n") is None  # not right after the separator
    assert is_valid(None) == "no summary block in the output"


def test_nan_and_inf_parse_as_floats_and_are_rejected() -> None:
    s = parse_summary("---\nval_bpb: nan\n")
    assert s is not None and math.isnan(s["val_bpb"])  # type: ignore[arg-type]
    assert "not finite" in (is_valid(s) or "")
    assert "not finite" in (is_valid(parse_summary("---\nval_bpb: -inf\n")) or "")


def test_junk_lines_around_and_inside_the_block() -> None:
    noisy = "W0101 warning: something\n---- not a separator\n" + BLOCK + "Traceback? no, just noise\n"
    assert parse_summary(noisy)["num_params_M"] == pytest.approx(50.3)  # type: ignore[index]
    # junk inside the block ends it: what came before is kept, what came after is not
    cut = parse_summary("---\nval_bpb: 0.95\n[rank0] warning!\nnum_steps: 7\n")
    assert cut == {"val_bpb": 0.95}
    # carriage-return progress bars do not hide the block
    assert parse_summary("step 1\rstep 2\r" + BLOCK.replace("\n", "\r\n"))["depth"] == 8  # type: ignore[index]


def test_values_that_are_not_plain_numbers_stay_strings() -> None:
    s = parse_summary("---\nval_bpb: 0.9\nname: gpt small\nodd: 1_000\nhexy: 0x10\n")
    assert s == {"val_bpb": 0.9, "name": "gpt small", "odd": "1_000", "hexy": "0x10"}


@pytest.mark.parametrize(
    ("summary", "fragment"),
    [
        ({"training_seconds": 300.0}, "no val_bpb"),
        ({"val_bpb": "fast"}, "not a number"),
        ({"val_bpb": True}, "not a number"),
        ({"val_bpb": 0.0}, "positive"),
        ({"val_bpb": -1.2}, "positive"),
        ({"val_bpb": 20.5}, "absurd"),
        ({"val_bpb": float("inf")}, "not finite"),
    ],
)
def test_is_valid_reasons(summary: dict, fragment: str) -> None:
    reason = is_valid(summary)
    assert reason is not None and fragment in reason


def test_is_valid_accepts_int_and_boundary() -> None:
    assert is_valid({"val_bpb": 1}) is None
    assert is_valid({"val_bpb": 20.0}) is None
