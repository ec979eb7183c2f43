"""Unit tests for marker parsing and the python-matrix ids (``pytest_uvbuild.hermetic``)."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_uvbuild.hermetic import (
    HermeticOptions,
    MarkerError,
    parse_marker,
    with_python_id,
    without_python_id,
)


def _mark(*args: Any, **kwargs: Any) -> pytest.Mark:
    return pytest.Mark("hermetic", args, kwargs, _ispytest=True)


def test_no_arguments_give_defaults() -> None:
    """A bare marker means the session's env, no timeout of its own, network allowed."""
    assert parse_marker([_mark()], "t") == HermeticOptions()


def test_closest_marker_wins_per_argument() -> None:
    """Function arguments override class and module ones; the rest are merged."""
    options = parse_marker(
        [_mark(timeout=5), _mark(timeout=60, env={"A": "1"}), _mark(network=False)], "t"
    )
    assert options.timeout == 5.0
    assert options.timeout_given
    assert options.env == (("A", "1"),)
    assert options.network is False


def test_python_string_is_one_env_and_list_is_a_matrix() -> None:
    """python="3.12" selects one interpreter; a list parametrizes the test."""
    single = parse_marker([_mark(python="3.12")], "t")
    assert single.pythons == ("3.12",)
    assert not single.python_matrix
    matrix = parse_marker([_mark(python=["3.12", "3.13"])], "t")
    assert matrix.pythons == ("3.12", "3.13")
    assert matrix.python_matrix


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tmeout": 1}, "unknown argument 'tmeout'; valid arguments are timeout, env"),
        ({"timeout": "x"}, "hermetic(timeout=...) must be a positive number"),
        ({"timeout": True}, "hermetic(timeout=...) must be a positive number"),
        ({"timeout": 0}, "hermetic(timeout=...) must be a positive number"),
        ({"env": {"A": 1}}, "hermetic(env=...) must be a dict of strings to strings"),
        ({"python": 3.12}, "hermetic(python=...) must be a string or a list of strings"),
        ({"python": []}, "hermetic(python=[]) names no interpreter"),
        ({"groups": [1]}, "hermetic(groups=...) must be a string or a list"),
        ({"network": "no"}, "hermetic(network=...) must be True or False"),
        ({"project": 3}, "hermetic(project=...) must be a path"),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict[str, Any], message: str) -> None:
    """Every invalid argument raises MarkerError naming the test and the argument."""
    with pytest.raises(MarkerError, match=r"^where: ") as excinfo:
        parse_marker([_mark(**kwargs)], "where")
    assert message in str(excinfo.value)


def test_positional_arguments_are_refused() -> None:
    """The marker takes keyword arguments only."""
    with pytest.raises(MarkerError, match="keyword arguments only"):
        parse_marker([_mark(5)], "t")


@pytest.mark.parametrize(
    ("plain", "versioned"),
    [
        ("t.py::test_x", "t.py::test_x[py3.12]"),
        ("t.py::test_x[1-a]", "t.py::test_x[1-a-py3.12]"),
        ("t.py::test_x[[odd]]", "t.py::test_x[[odd]-py3.12]"),
    ],
)
def test_python_ids_round_trip(plain: str, versioned: str) -> None:
    """The py<version> id part is added last and removed exactly."""
    assert with_python_id(plain, "3.12") == versioned
    assert without_python_id(versioned, "3.12") == plain


def test_default_timeout_from_option_then_ini(pytester: pytest.Pytester) -> None:
    """--hermetic-timeout wins over ini hermetic_timeout; 0 means no limit; junk is refused."""
    from pytest_uvbuild.hermetic import _hermetic_timeout

    pytester.makeini("[pytest]\nhermetic_timeout = 30\n")
    assert _hermetic_timeout(pytester.parseconfig()) == 30.0
    assert _hermetic_timeout(pytester.parseconfig("--hermetic-timeout=5")) == 5.0
    assert _hermetic_timeout(pytester.parseconfig("--hermetic-timeout=0")) is None
    pytester.makeini("[pytest]\nhermetic_timeout = soon\n")
    with pytest.raises(pytest.UsageError, match="hermetic_timeout = 'soon' is not a number"):
        _hermetic_timeout(pytester.parseconfig())
