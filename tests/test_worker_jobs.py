"""A worker's job spool: every line kept (in memory, then on disk), read again from any line,
in bounded parts."""

from __future__ import annotations

import time

from distbuild.protocol import messages as m
from distbuild.worker import jobs
from distbuild.worker.jobs import OutputSpool


def test_lines_are_read_in_order_and_again_from_where_a_controller_asks(tmp_path):
    spool = OutputSpool(tmp_path / "j.out")
    spool.rewind(0)
    for n in range(5):
        spool.append(f"line {n}")
    assert spool.read() == (0, [f"line {n}" for n in range(5)])
    assert spool.read() == (5, [])
    spool.append("line 5")
    assert spool.read() == (5, ["line 5"])
    # A new controller has lines 0-2: it gets the rest, nothing twice.
    spool.rewind(3)
    assert spool.read() == (3, ["line 3", "line 4", "line 5"])
    spool.close()
    assert not (tmp_path / "j.out").exists()


def test_a_read_stops_near_the_message_size_and_newlines_stay_inside_a_line(tmp_path):
    spool = OutputSpool(tmp_path / "j.out")
    spool.rewind(0)
    for _ in range(40):
        spool.append("z" * 100_000)
    spool.append("two\nparts")
    first, part = spool.read()
    assert first == 0 and 10 <= len(part) <= jobs.MESSAGE_TEXT_BYTES // 100_000 + 1
    rest = []
    while True:
        _, more = spool.read()
        if not more:
            break
        rest += more
    assert len(part) + len(rest) == 41 and rest[-1] == "two parts"
    spool.close()


def test_a_long_log_moves_to_the_spool_file_and_reads_on_where_it_was(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "MEMORY_BYTES", 100)
    spool = OutputSpool(tmp_path / "j.out")
    spool.append("short")
    assert not (tmp_path / "j.out").exists()  # a few lines stay in memory
    spool.rewind(0)
    assert spool.read() == (0, ["short"])
    for n in range(20):
        spool.append(f"line {n}")
    assert (tmp_path / "j.out").exists()  # past MEMORY_BYTES: on disk, not in memory
    assert spool.read() == (1, [f"line {n}" for n in range(20)])
    spool.rewind(5)
    assert spool.read() == (5, [f"line {n}" for n in range(4, 20)])
    spool.close()
    assert not (tmp_path / "j.out").exists()


def test_new_lines_wait_until_the_oldest_is_due_or_enough_have_gathered(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "OUTPUT_SECONDS", 0.3)
    monkeypatch.setattr(jobs, "FLUSH_LINES", 5)
    spool = OutputSpool(tmp_path / "j.out")
    spool.rewind(0)
    spool.append("one")
    now = time.monotonic()
    assert not spool.due(now) and spool.due(now + 0.3)
    for n in range(4):
        spool.append(f"more {n}")
    assert spool.due(now)  # FLUSH_LINES waiting: no need to wait for the time
    assert spool.read()[1] and spool.read() == (5, [])
    assert not spool.due(now + 10)  # nothing unread
    spool.close()


class Recorder:
    """The link's sending end as JobTable uses it: each write is one list of messages."""

    def __init__(self):
        self.writes: list[list] = []

    def send_many(self, messages):
        self.writes.append(list(messages))


def test_a_short_jobs_log_goes_out_with_its_result_in_one_write(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "OUTPUT_SECONDS", 30.0)  # a job shorter than that
    table = jobs.JobTable(tmp_path / "jobs", log=lambda text: None)
    link = Recorder()
    try:
        held = table.add("j1", link)
        for n in range(3):
            table.line(held, f"line {n}")
        time.sleep(0.3)  # the sender wakes meanwhile: the lines are not due yet
        assert link.writes == []
        table.finish(held, m.JobFinished(job="j1", seconds=0.5))
        deadline = time.monotonic() + 5
        while not link.writes and time.monotonic() < deadline:
            time.sleep(0.01)
        (write,) = link.writes
        assert [type(x) for x in write] == [m.JobOutput, m.JobFinished]
        assert write[0].lines == ["line 0", "line 1", "line 2"] and write[0].first == 0
    finally:
        table.stop()
