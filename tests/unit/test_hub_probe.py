"""The benchmarks' in-hub probe file: lag samples and garbage-collection totals read back per interval."""

from __future__ import annotations

from benchmarks import hub_probe

LINES = """\
10.0 1.0
10.1 gc 0.500000 100 10 1
11.0 2.0
11.1 gc 0.800000 150 15 3
12.0 9.0
12.1 gc 0.050000 20 2 0
13.0 4.0
13.1 gc 0.250000 60 6 2
"""


def test_lag_samples_leave_the_gc_lines_out(tmp_path):
    path = tmp_path / "lag.txt"
    path.write_text(LINES)
    assert hub_probe.read(str(path), 10.5, 13.0) == [2.0, 9.0, 4.0]


def test_gc_totals_per_interval_across_a_hub_restart(tmp_path):
    path = tmp_path / "lag.txt"
    path.write_text(LINES)
    seconds, full = hub_probe.read_gc(str(path), 10.5, 11.5)
    assert (round(seconds, 6), full) == (0.3, 2)
    # 12.1: a restarted hub counts from zero; its totals are added whole, then its own increments
    seconds, full = hub_probe.read_gc(str(path), 10.5, 14.0)
    assert (round(seconds, 6), full) == (0.3 + 0.05 + 0.2, 2 + 0 + 2)
    assert hub_probe.read_gc(str(path), 20.0, 30.0) == (0.0, 0)
