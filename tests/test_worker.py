"""Unit tests for the inner side's pieces, loaded from ``worker.py`` by path as the runner does."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from collections.abc import Iterator
from types import ModuleType

import pytest

from pytest_uvbuild.runner import WORKER_SCRIPT


@pytest.fixture(scope="module")
def worker() -> ModuleType:
    """worker.py imported under a private name."""
    spec = importlib.util.spec_from_file_location("_uvbuild_worker_under_test", WORKER_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def guard(worker: ModuleType) -> Iterator[object]:
    """An installed NetworkGuard, removed afterwards."""
    installed = worker.NetworkGuard()
    installed.install()
    yield installed
    installed.uninstall()


def test_loopback_hosts(worker: ModuleType) -> None:
    """Loopback names and addresses pass the guard's check; others do not."""
    for host in ("localhost", "127.0.0.1", "127.8.9.1", "::1", None, ""):
        assert worker._is_loopback(host), host
    for host in ("0.0.0.0", "10.0.0.1", "example.com", "203.0.113.5"):  # noqa: S104 - not bound
        assert not worker._is_loopback(host), host


@pytest.mark.usefixtures("guard")
def test_guard_refuses_non_loopback_and_allows_loopback() -> None:
    """With the guard, a non-loopback connect fails with a clear error; loopback works."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        socket.create_connection(("127.0.0.1", port)).close()
        with pytest.raises(ConnectionRefusedError, match=r"hermetic\(network=False\)"):
            # 0.0.0.0 is not loopback to the guard, yet never leaves this machine.
            socket.create_connection(("0.0.0.0", port))  # noqa: S104 - a connect, not a bind


def test_guard_uninstall_restores_socket(worker: ModuleType) -> None:
    """Removing the guard puts the original socket functions back."""
    before = (socket.socket.connect, socket.getaddrinfo)
    guard = worker.NetworkGuard()
    guard.install()
    assert socket.socket.connect is not before[0]
    guard.uninstall()
    assert (socket.socket.connect, socket.getaddrinfo) == before


def test_control_channel_reads_lines_and_eof_as_shutdown(worker: ModuleType) -> None:
    """Commands arrive one JSON line at a time; a closed pipe reads as shutdown."""
    read_fd, write_fd = os.pipe()
    channel = worker.ControlChannel(read_fd)
    assert channel.read(block=False) is None
    os.write(write_fd, json.dumps(["run", {"nodeids": ["a"], "end": True}]).encode() + b"\n")
    assert channel.read(block=True) == ["run", {"nodeids": ["a"], "end": True}]
    os.close(write_fd)
    assert channel.read(block=True) == ["shutdown", {}]
    os.close(read_fd)


def test_event_channel_writes_one_json_line_per_event(worker: ModuleType) -> None:
    """Events are [name, kwargs] lines; values JSON lacks become str() of themselves."""
    read_fd, write_fd = os.pipe()
    channel = worker.EventChannel(write_fd)
    channel.send("logstart", nodeid="t.py::ü[\n]", extra={1, 2}, obj=object, raw=b"\xff")
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        lines = fh.read().splitlines()
    assert len(lines) == 1
    name, kwargs = json.loads(lines[0])
    assert name == "logstart"
    assert kwargs["nodeid"] == "t.py::ü[\n]"
    assert sorted(kwargs["extra"]) == [1, 2]
    assert kwargs["obj"] == str(object)
    assert kwargs["raw"] == "b'\\xff'"  # as junitxml writes a bytes user property


def test_event_channel_queued_lines_wait_for_the_next_send(worker: ModuleType) -> None:
    """Queued events stay unwritten until a send or flush, then arrive in order."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    channel = worker.EventChannel(write_fd)
    channel.queue("logreport", report={"when": "call"})
    channel.queue("logfinish", nodeid="t.py::a")
    with pytest.raises(BlockingIOError):
        os.read(read_fd, 1024)
    channel.send("logstart", nodeid="t.py::b")
    channel.queue("logfinish", nodeid="t.py::b")
    channel.flush()
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        names = [json.loads(line)[0] for line in fh.read().splitlines()]
    assert names == ["logreport", "logfinish", "logstart", "logfinish"]
