"""A worker's job spool: every line kept (in memory, then on disk), read again from any line,
in bounded parts."""

from __future__ import annotations

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
