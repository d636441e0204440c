"""`collab-loadtest` (or `python -m loadtest`): the command line of the load generator."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import click
import orjson

from .config import LoadConfig, LoadTestError, parse_mix, parse_params
from .report import summary_table
from .runner import run_load

EXIT_SETUP = 2
T = TypeVar("T")


def _fail(message: str) -> None:
    click.echo(f"collab-loadtest: {message}", err=True)
    sys.exit(EXIT_SETUP)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", default="ws://127.0.0.1:8080/ws", show_default=True,
              help="WebSocket base URL; documents are <url>/<name> (loopback hosts only).")
@click.option("--documents", "-d", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--clients", "-c", type=click.IntRange(min=1), default=4, show_default=True, help="Clients per document.")
@click.option("--rate", "-r", type=click.FloatRange(min=0), default=1000.0, show_default=True,
              help="Aggregate text updates per second over all documents.")
@click.option("--steps", default="", help="Comma-separated rates to step through (each for --duration), e.g. 500,1000.")
@click.option("--duration", type=click.FloatRange(min=0), default=10.0, show_default=True, help="Seconds (per step).")
@click.option("--mix", default="typing,cursor", show_default=True, help="Any of typing,cursor,churn,late.")
@click.option("--token", default=None, help="Sent as the token query parameter.")
@click.option("--param", "params", multiple=True, metavar="K=V", help="Extra query parameter (repeatable).")
@click.option("--drain", type=click.FloatRange(min=0), default=3.0, show_default=True,
              help="Seconds to wait for the last deliveries after each step.")
@click.option("--max-seconds", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Hard cap on the whole run.")
@click.option("--check-rooms", type=int, default=8, show_default=True,
              help="Documents whose clients rebuild their Doc with pycrdt at the end (-1: all).")
@click.option("--prefix", default="", help="Document name prefix (default: a fresh random one).")
@click.option("--seed", type=int, default=None)
@click.option("--dialect", type=click.Choice(["y-websocket", "hocuspocus"]), default="y-websocket", show_default=True,
              help="hocuspocus: --url is the route (ws://…/hocuspocus) and documents are named in the messages.")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON object.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Live progress on stderr.")
def main(url: str, documents: int, clients: int, rate: float, steps: str, duration: float, mix: str,
             token: str | None, params: tuple[str, ...], drain: float, max_seconds: float, check_rooms: int,
             prefix: str, seed: int | None, dialect: str, as_json: bool, progress: bool) -> None:
    """Drive a y-websocket server (collab-server or the reference) and measure it end to end.

    Exit status: 0 when every update reached every client and all clients converged, 1 when
    not (loss, divergence, aborted), 2 for bad options.
    """
    try:
        query = parse_params(params)
        if token:
            query["token"] = token
        step_rates = tuple(float(s) for s in steps.split(",") if s.strip())
        config = LoadConfig(
            url=url, documents=documents, clients=clients, rate=rate, duration=duration, mix=parse_mix(mix),
            params=query, steps=step_rates, drain=drain, max_seconds=max_seconds, check_rooms=check_rooms,
            prefix=prefix, seed=seed, dialect=dialect,
        )
        config.validate()
    except (LoadTestError, ValueError) as exc:
        _fail(str(exc))
        return
    out = sys.stderr if progress else None
    result = _run(run_load(config, progress=out))
    if as_json:
        click.echo(orjson.dumps(result.as_dict()).decode())
    else:
        click.echo(summary_table(result))
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":  # pragma: no cover
    main()
