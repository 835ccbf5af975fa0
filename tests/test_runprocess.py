"""Process handling: live output, exit status, and cancelling a whole process tree."""

from __future__ import annotations

import os
import threading
import time

import pytest

from distbuild import runprocess
from distbuild.runprocess import Cancelled, CancelToken
from tests.proctree import descendants, wait_gone


def test_lines_arrive_while_the_process_runs():
    seen: list[tuple[float, str]] = []
    started = time.monotonic()
    status = runprocess.run(["sh", "-c", "echo first; sleep 0.5; echo second; exit 4"],
                            on_line=lambda line: seen.append((time.monotonic(), line)))
    assert status == 4
    assert [line for _, line in seen] == ["first", "second"]
    assert seen[0][0] - started < 0.4


def test_stderr_is_merged_and_a_last_line_without_newline_is_kept():
    lines: list[str] = []
    runprocess.run(["sh", "-c", "echo out; echo err >&2; printf tail"], on_line=lines.append)
    assert lines == ["out", "err", "tail"]


def test_cancel_kills_the_whole_tree_within_two_seconds():
    token = CancelToken()
    ready = threading.Event()
    result: list[BaseException] = []

    def target() -> None:
        try:
            runprocess.run(
                ["sh", "-c", "sleep 300 & (sleep 300 & sleep 300) & echo ready; wait"],
                on_line=lambda line: ready.set(), cancel=token)
        except BaseException as e:  # handed to the test thread
            result.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    assert ready.wait(10)
    time.sleep(0.2)  # let the subshell start its own children
    tree = descendants(os.getpid())
    assert len(tree) >= 4, tree
    cancelled_at = time.monotonic()
    token.cancel()
    thread.join(5)
    assert wait_gone(tree, 2 - (time.monotonic() - cancelled_at)) == set()
    assert isinstance(result[0], Cancelled)


def test_a_cancelled_token_starts_nothing():
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        runprocess.run(["true"], cancel=token)


def test_a_failing_callback_does_not_block_the_child():
    def explode(line: str) -> None:
        raise OSError(28, "No space left on device")

    started = time.monotonic()
    # 1 MB of output: far more than a pipe holds, so an undrained pipe would hang.
    with pytest.raises(OSError, match="No space left"):
        runprocess.run(["sh", "-c", "yes | head -c 1000000"], on_line=explode)
    assert time.monotonic() - started < 10


def test_an_overlong_line_is_cut_with_a_marker_and_the_lines_after_it_come_through():
    lines: list[str] = []
    limit = runprocess.MAX_LINE_BYTES
    status = runprocess.run(["sh", "-c", f"head -c {limit * 12} /dev/zero | tr '\\0' x; "
                             f"echo; echo short; head -c {limit} /dev/zero | tr '\\0' y; echo"],
                            on_line=lines.append)
    assert status == 0
    assert len(lines) == 3
    assert lines[0] == "x" * limit + runprocess.cut_marker(limit * 11)
    assert lines[1] == "short"
    assert lines[2] == "y" * limit  # exactly at the limit: whole, no marker
