"""PLACEHOLDER written by the lead so the app imports while the classifier is being built.

Whoever is building the machine-open classifier: replace this whole file (same API).
"""

from __future__ import annotations

from dataclasses import dataclass

FORWARDED_BY_DEFAULT = {"human", "proxy_open"}


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str


class Classifier:
    @classmethod
    def load(cls, extra_rules_path: str | None = None) -> Classifier:
        return cls()

    def classify(self, *, user_agent: str | None, ip: str | None) -> Verdict:
        return Verdict("human", "no-signal")


def should_forward(verdict: str, machine_opens: str) -> bool:
    return machine_opens == "forward" or verdict in FORWARDED_BY_DEFAULT
