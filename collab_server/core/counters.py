"""Event counters owned by whoever counts (a hub, a write-ahead), read by the metrics extension.

A dict increment per event is all the hot path can afford (prometheus_client takes a lock and
a label lookup per call). Not a process-wide singleton: each hub gets its own unless the
runtime hands every part of one process the same instance.
"""

from __future__ import annotations

from collections import defaultdict


class Counters:
    __slots__ = ("labelled", "values")

    def __init__(self) -> None:
        self.values: defaultdict[str, float] = defaultdict(float)
        self.labelled: defaultdict[tuple[str, str, str], float] = defaultdict(float)

    def inc(self, name: str, amount: float = 1) -> None:
        self.values[name] += amount

    def inc_label(self, name: str, label: str, value: str, amount: float = 1) -> None:
        self.labelled[(name, label, value)] += amount

    def get(self, name: str, label: tuple[str, str] | None = None) -> float:
        if label is None:
            return self.values.get(name, 0.0)
        return self.labelled.get((name, *label), 0.0)
