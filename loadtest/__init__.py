"""A scripted load generator for any y-websocket-compatible server (this one or the reference).

D documents x C clients speak the y-websocket protocol over plain WebSockets; a scheduler
sends text updates at a target aggregate rate (in typing bursts), optionally cursor moves over
awareness, leaves and re-joins (churn) and late joiners. It measures, end to end, the time from
a sender's send to each other receiver's delivery (p50 / p95 / p99 / max), delivered updates per
second, loss (an update not delivered to every other client of its room by the end of the step
plus a drain period), convergence at the end, errors and reconnects.

It has to drive ~20,000 updates/s (x 3 receivers each) from one core, so the hot path avoids
both a pycrdt Doc per client and a general WebSocket library (measured: pycrdt insert +
observe costs 15-300 us per update as the text grows; `websockets` costs ~11 us per received
frame; this client ~2 us):

* updates are encoded by hand: each one inserts a short string ``\\x02<sender>.<seq>\\x03`` at the
  end of the sender's own run of text in the Y.Text ``content`` (origin = the sender's previous
  character), which is a valid Yjs update byte for byte identical to what Yjs/pycrdt would emit;
* receivers do not apply updates: they find the tags in the raw frame with one regex, and record
  the delivery time per (sender, seq) and which ones they have seen (tags inside a sync step 2
  count as seen, so late joiners and re-joiners are checked too);
* a minimal WebSocket client on an asyncio Protocol (masking in C via `websockets.speedups`)
  parses every frame of a TCP read in one callback, with one clock reading per read.

Convergence is checked for real at the end: the clients of `check_rooms` rooms keep every frame
they received and sent, and each one's pycrdt Doc is rebuilt from them; all texts of a room must
be identical. Every loop is bounded in count and time; `max_seconds` caps a whole run.

Modules by job: `client` (the WebSocket client), `workload` (hand-encoded Yjs inserts and the
simulated editors; framing comes from the server's own `core.protocol`), `runner` (the stepped
schedule and its measurements), `scenarios` (single-purpose measurements for the benchmarks),
`report` (results and the summary table), `cli` (`collab-loadtest`, `python -m loadtest`).
"""

from .config import LoadConfig, LoadTestError, check_loopback, parse_mix, parse_params
from .report import LatencyStats, LoadResult, StepResult, summary_table
from .runner import run_load
from .scenarios import close_all, cold_rooms, hold_connections, hold_documents, large_document, seed_rooms
from .workload import encode_text_insert, tags_in

__all__ = [
    "LatencyStats", "LoadConfig", "LoadResult", "LoadTestError", "StepResult", "check_loopback", "close_all",
    "cold_rooms", "encode_text_insert", "hold_connections", "hold_documents", "large_document", "parse_mix",
    "parse_params", "run_load", "seed_rooms", "summary_table", "tags_in",
]
