"""`make chaos` in small: the script runs, and under its kills and outages a reconnecting client loses nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_a_short_chaos_run_loses_nothing_a_reconnecting_client_typed() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--duration", "24", "--kills", "3", "--pg-outage", "3",
         "--rooms", "4", "--slowloris", "4", "--seed", "3", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=200, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["kills"] == 3
    reconnecting = figures["updates"]["reconnecting"]
    assert reconnecting["sent"] > 1000 and reconnecting["lost"] == 0
    assert figures["reconnecting_writers_converged_with_storage"] is True
    assert figures["lost_without_a_kill"] == 0  # whatever a forgetful client lost, a kill took it
    assert figures["kill_to_all_writers_synced_s"]["measured"] == 3
    assert figures["slowloris"]["answers"].keys() <= {"HTTP/1.1 408 Request Timeout"}
