"""The argparse types the ``idemsend`` command and the chaos run share (``idemsend.cli``)."""

from __future__ import annotations

import argparse

import pytest

from harness.chaos import build_parser as chaos_parser
from idemsend.cli import build_parser, positive, rate


@pytest.mark.parametrize(("text", "needle"), [("x", "must be a number between 0 and 1"), ("1.5", "between 0 and 1"),
                                              ("-0.1", "between 0 and 1")])
def test_rate_refuses_what_is_not_a_share(text: str, needle: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=needle):
        rate(text)


@pytest.mark.parametrize(
    ("text", "needle"), [("1.5", "must be a whole number"), ("0", "at least 1"), ("-3", "at least 1")]
)
def test_positive_refuses_what_is_not_a_count(text: str, needle: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=needle):
        positive(text)


def test_the_chaos_run_and_the_command_answer_bad_options_alike(capsys: pytest.CaptureFixture[str]) -> None:
    assert (rate("0"), rate("1"), positive("10000")) == (0.0, 1.0, 10000)
    errors = []
    for parser, argv in ((chaos_parser(), ["--dup-rate", "2"]), (build_parser(), ["demo", "--dup-rate", "2"])):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(argv)
        assert exit_.value.code == 2
        errors.append(capsys.readouterr().err.strip().splitlines()[-1].split(": error: ")[1])
    assert errors[0] == errors[1] == "argument --dup-rate: must be between 0 and 1, got 2"
