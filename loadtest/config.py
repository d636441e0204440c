"""What a run is asked to do, and how the command line says it."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MIXES = ("typing", "cursor", "churn", "late")
DIALECTS = ("y-websocket", "hocuspocus")


class LoadTestError(RuntimeError):
    """The run could not start (bad target, nothing connected)."""




# -- configuration and results -------------------------------------------------------------


@dataclass
class LoadConfig:
    url: str = "ws://127.0.0.1:8080/ws"
    documents: int = 10
    clients: int = 4  # per document
    rate: float = 1000.0  # aggregate text updates per second (all documents together)
    duration: float = 10.0  # seconds per step
    mix: tuple[str, ...] = ("typing", "cursor")
    params: dict[str, str] = field(default_factory=dict)  # query string, e.g. token
    steps: tuple[float, ...] = ()  # rates to step through (each for `duration`); empty: just `rate`
    drain: float = 3.0  # seconds after a step for the last deliveries
    max_seconds: float = 600.0  # hard cap on the whole run
    cursor_ratio: float = 0.25  # cursor moves per text update (when both are in the mix)
    churn_interval: float = 30.0  # each client leaves and a new one joins about this often
    late_at: float = 0.5  # late joiners join at this fraction of the run, one per document
    typists: float = 0.25  # share of clients typing a burst at any moment
    burst: tuple[int, int] = (3, 20)  # keystrokes per typing burst
    connect_concurrency: int = 128
    connect_timeout: float = 10.0
    max_reconnects: int = 3  # per client, after an unexpected close
    check_rooms: int = 8  # rooms whose clients rebuild a pycrdt Doc at the end (-1: all)
    stop_p99_ms: float = 1000.0  # stepping stops after a step with loss or p99 beyond this ...
    always_run_to: float = 0.0  # ... except that steps up to this rate always run
    prefix: str = ""  # document name prefix; default: a fresh random one per run
    seed: int | None = None
    tick: float = 0.001  # scheduler period
    # "hocuspocus": `url` is the route itself (…/hocuspocus) and documents are named in the messages.
    dialect: str = "y-websocket"

    def validate(self) -> None:
        check_loopback(self.url)
        if self.documents < 1 or self.clients < 1:
            raise LoadTestError("--documents and --clients must be at least 1")
        if self.rate < 0 or any(r < 0 for r in self.steps) or self.duration < 0:
            raise LoadTestError("rates and durations must not be negative")
        unknown = set(self.mix) - set(MIXES)
        if unknown:
            raise LoadTestError(f"unknown mix element(s) {sorted(unknown)}; choose from {', '.join(MIXES)}")
        if self.dialect not in DIALECTS:
            raise LoadTestError(f"unknown dialect {self.dialect!r}; choose from {', '.join(DIALECTS)}")
        if self.max_seconds <= 0:
            raise LoadTestError("--max-seconds must be positive")

    @property
    def rates(self) -> tuple[float, ...]:
        return self.steps or (self.rate,)


def parse_params(pairs: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise LoadTestError(f"--param expects k=v, got {pair!r}")
        out[key] = value
    return out


def parse_mix(text: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    unknown = set(items) - set(MIXES)
    if unknown:
        raise LoadTestError(f"unknown mix element(s) {', '.join(sorted(unknown))}; choose from {', '.join(MIXES)}")
    return items


def check_loopback(url: str) -> None:
    """The load generator only targets this machine: refuse anything but a loopback host."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise LoadTestError(f"the URL must start with ws:// (got {url!r})")
    host = parts.hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise LoadTestError(f"the load generator only targets loopback addresses (got host {host!r})")
