"""Schedule timing, pure: durations, cron expressions (UTC), and the missed-slot rule."""

from datetime import datetime, timezone

import pytest

from distbuild.schedules import ScheduleError, Timing, check_cron, check_name, due, parse_every

DAY = 86400.0


def utc(*args) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("text, seconds", [("6h", 21600), ("90m", 5400), ("1h30m", 5400),
                                           ("10s", 10), ("2d", 2 * DAY), ("1w", 7 * DAY)])
def test_durations(text, seconds):
    assert parse_every(text) == seconds


@pytest.mark.parametrize("text", ["6", "h", "6x", "1h 30m", "-5m", "0s", ""])
def test_bad_durations_name_the_option(text):
    with pytest.raises(ScheduleError, match="--every"):
        parse_every(text)


def test_every_counts_slots_from_when_it_was_added():
    t = Timing(every=3600, anchor=1000)
    assert t.next_after(0) == 4600 and t.next_after(1000) == 4600
    assert t.next_after(4600) == 8200 and t.next_after(5000) == 8200


def test_cron_slots_are_utc_times():
    t = Timing(cron=check_cron("0 3 * * *"))
    assert t.next_after(utc(2026, 12, 1, 2, 59)) == utc(2026, 12, 1, 3, 0)
    assert t.next_after(utc(2026, 12, 1, 3, 0)) == utc(2026, 12, 2, 3, 0)
    assert Timing(cron="*/15 * * * *").next_after(utc(2026, 1, 1, 0, 7)) == utc(2026, 1, 1, 0, 15)


@pytest.mark.parametrize("expr", ["0 3 * *", "61 * * * *", "0 3 * * * *", "daily"])
def test_bad_cron_expressions_are_refused(expr):
    with pytest.raises(ScheduleError, match="five fields"):
        check_cron(expr)


def test_missed_slots_make_one_run():
    t = Timing(every=60, anchor=0)
    # Down from t=30 to t=1000: 16 slots went by; one run, then counted from that run.
    assert due(t, 30, 1000)
    assert not due(t, 1000, 1010)  # the run at 1000 took every missed slot
    assert due(t, 1000, 1020)  # the next regular slot (1020) runs as usual
    assert not due(Timing(cron="0 3 * * *"), utc(2026, 12, 1, 3, 0), utc(2026, 12, 2, 2, 0))
    assert due(Timing(cron="0 3 * * *"), utc(2026, 12, 1, 3, 0), utc(2026, 12, 9, 12, 0))


def test_names_and_exactly_one_timing():
    assert check_name("nightly-x86_64.v2") == "nightly-x86_64.v2"
    for bad in ("", "-x", "a b", "a/b", "x" * 65):
        with pytest.raises(ScheduleError, match="schedule name"):
            check_name(bad)
    with pytest.raises(ScheduleError, match="exactly one"):
        Timing()
    with pytest.raises(ScheduleError, match="exactly one"):
        Timing(every=60, cron="* * * * *")
    assert Timing(every=5400).describe() == "every 1h30m"
