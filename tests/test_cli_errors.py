"""Errors that are not the user's: one line by default, the traceback with -v; click's usage errors are one line."""

from __future__ import annotations

import pytest

from conftest import assert_one_line_error


@pytest.fixture
def broken_inspect(monkeypatch):
    import edgekit.inspect

    def boom(*args, **kwargs):
        raise ValueError("Too many bins for data range")

    monkeypatch.setattr(edgekit.inspect, "inspect_bundle", boom)


def test_internal_error_is_one_line(cli, broken_inspect, tiny_bundle):
    result = cli("inspect", tiny_bundle)
    assert_one_line_error(result, "internal error (ValueError: Too many bins for data range)", "-v")


def test_internal_error_traceback_with_verbose(cli, broken_inspect, tiny_bundle):
    with pytest.raises(ValueError, match="Too many bins"):
        cli("-v", "inspect", tiny_bundle)


@pytest.mark.parametrize("args, fragment", [
    (("bench", "BUNDLE", "--bogus"), "No such option '--bogus'"),
    (("run", "BUNDLE", "--precision", "int9"), "'int9' is not one of"),
    (("nosuch",), "No such command 'nosuch'"),
])
def test_usage_errors_are_one_line_naming_help(cli, tiny_bundle, args, fragment):
    result = cli(*(str(tiny_bundle) if a == "BUNDLE" else a for a in args))
    assert result.code == 2
    assert_one_line_error(result, fragment, "--help")
    assert result.err.count("\n") == 1, result
