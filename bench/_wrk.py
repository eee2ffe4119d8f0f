"""Running wrk with a Lua script and reading what it measured, for the HTTP benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from typing import Any

# Appended when statuses are counted: every thread counts its responses by status code (wrk calls
# ``response`` for each one), ``setup`` keeps the thread objects so that ``done`` can add their
# counts up. A ``setup`` or ``response`` the script defines itself still runs.
STATUSES = """
local counted_threads = {}
local script_setup = setup
setup = function(thread)
  table.insert(counted_threads, thread)
  if script_setup then script_setup(thread) end
end
statuses = {}
local script_response = response
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if script_response then script_response(status, headers, body) end
end
status_counts = function()
  local total = {}
  for _, thread in ipairs(counted_threads) do
    for code, n in pairs(thread:get("statuses")) do total[code] = (total[code] or 0) + n end
  end
  local parts = {}
  for code, n in pairs(total) do table.insert(parts, string.format('"%d": %d', code, n)) end
  return "{" .. table.concat(parts, ", ") .. "}"
end
"""

# Appended to every script: wrk reports the run as one JSON line (percentiles in microseconds;
# ``statuses`` is null unless counted).
DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d, "statuses": %s}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99), latency.max,
    status_counts and status_counts() or "null"))
end
"""


def run_wrk(base_url: str, script: str, *, threads: int, connections: int, duration: int,
            statuses: bool = False, timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``script`` (a wrk ``request`` function; the reporter is added here) and return the report.

    ``statuses``: also count responses by status code (``{"201": n, ...}`` under ``statuses``).
    ``timeout_s``: wrk's request timeout (its default is 2 s; a slower answer is a socket error).
    """
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script + (STATUSES if statuses else "") + DONE)
    timeout = [f"--timeout={timeout_s:g}s"] if timeout_s else []
    try:
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", *timeout, "--latency", "-s", fh.name,
             base_url],
            capture_output=True, text=True, check=True,
        ).stdout
    finally:
        os.unlink(fh.name)
    return json.loads(next(line for line in out.splitlines() if line.startswith("WRK "))[4:])
