"""Benchmark reports are computed from what was measured: wrk's failures are counted, sentences follow the data."""

from __future__ import annotations

from benchmarks.service_speed import assign_sentence, parse_wrk

WRK_WITH_ERRORS = """Running 2s test @ http://127.0.0.1:8000
  2 threads and 16 connections
  Latency Distribution
     50%    1.80ms
     99%   19.43ms
  2088 requests in 2.09s, 1.41MB read
  Socket errors: connect 1, read 12, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:    997.11
"""

WRK_CLEAN = """  2088 requests in 1.50m, 1.41MB read
Requests/sec:    23.20
"""


def test_wrk_socket_errors_timeouts_and_non_2xx_are_errors():
    row = parse_wrk(WRK_WITH_ERRORS)
    assert row["requests"] == 2088 and row["seconds"] == 2.09 and row["req_per_s"] == 997.11
    assert row["socket_errors"] == {"connect": 1, "read": 12, "write": 0, "timeout": 3}
    assert row["timeouts"] == 3 and row["non_2xx"] == 7
    assert row["errors"] == 1 + 12 + 3 + 7
    assert row["error_kinds"] == {"socket connect": 1, "socket read": 12, "socket timeout": 3, "non-2xx": 7}


def test_clean_wrk_run_has_no_errors_and_a_failed_one_has():
    row = parse_wrk(WRK_CLEAN)
    assert row["errors"] == 0 and row["socket_errors"] == {} and row["seconds"] == 90.0
    assert parse_wrk("", returncode=1)["errors"] == 1
    assert parse_wrk("unable to connect to 127.0.0.1:8000 Connection refused")["wrk_failed"]


def test_assign_sentence_follows_the_measured_segments():
    folded = assign_sentence({"items": 3000, "segments": 1}, {"items": 6072, "segments": 2}, 1024)
    assert "3,072 new items in 3 requests" in folded and "from 1 to 2 segment(s)" in folded
    assert "small writes fold" in folded
    each = assign_sentence({"items": 10, "segments": 1}, {"items": 30, "segments": 3}, 10)
    assert "one new segment per request" in each and "fold" not in each
