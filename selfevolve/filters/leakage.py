"""Hindsight leakage: a revision is trained on as the *first* answer to the question, so it must not
refer to anything said after it (a correction, an apology, "as you said")."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ConfigError
from .base import Decision, KEEP, for_revisions

# Each pattern names a way an answer shows it was written after the conversation went on. "earlier" is
# matched only next to words about the conversation: alone it also means "earlier versions of Python".
PATTERNS = [
    r"\bas you(?:'ve| have)? (?:said|mentioned|noted|pointed out|suggested|correctly|stated|asked|explained)\b",
    r"\byou(?:'re| are) (?:absolutely |completely |quite )?(?:right|correct)\b",
    r"\byou were right\b",
    r"\bas I (?:said|mentioned|stated|noted|explained|wrote)\b",
    r"\bmy (?:previous|earlier|last|original|first|prior|initial) (?:answer|response|reply|message|statement)\b",
    r"\b(?:previous|earlier|initial|prior) (?:answer|response|reply)\b",
    r"\b(?:said|mentioned|stated|discussed|answered|wrote|noted|asked) (?:earlier|before|previously)\b",
    r"\bearlier (?:in (?:this|our) (?:conversation|chat|discussion))\b",
    r"\bI apologi[sz]e for (?:the|my|any) (?:confusion|mistake|error|oversight|misunderstanding)\b",
    r"\bsorry (?:for|about) (?:the|my) (?:confusion|mistake|error|oversight|misunderstanding)\b",
    r"\bthanks?(?: you)? for (?:the|your) (?:correction|clarification|feedback|pointing)\b",
    r"\b(?:good catch|my mistake|my bad|I stand corrected)\b",
    r"\bI was (?:wrong|mistaken|incorrect)\b",
    r"\bcorrect(?:ing)? (?:myself|my (?:answer|mistake|error))\b",
    r"\b(?:updated|corrected|revised) (?:answer|response|version)\b",
    r"\b(?:upon|after|on) (?:further )?(?:reflection|review)\b",
    r"\bas (?:we|you and I) (?:discussed|established|agreed)\b",
    r"\bthe user (?:said|mentioned|pointed out|noted|corrected|clarified|asked)\b",
]


@dataclass
class LeakageFilterConfig:
    enabled: bool = True
    """Drops revisions that refer to the later conversation ("as you said", "my previous answer", ...):
    the answer must read as a first reply. Built-in patterns: selfevolve/filters/leakage.py."""
    extra_patterns: list[str] = field(default_factory=list)
    """More regular expressions (Python syntax, matched case-insensitively) that count as leakage."""

    def validate(self, key: str) -> None:
        for i, pattern in enumerate(self.extra_patterns):
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as e:
                raise ConfigError(f"{key}.extra_patterns[{i}]: {pattern!r} is not a valid regex ({e})") from None


class LeakageFilter:
    name = "leakage"
    Config = LeakageFilterConfig
    uses_backend = uses_judge = False

    def __init__(self, cfg):
        self.patterns = []
        for p in PATTERNS + list(cfg.extra_patterns):
            try:
                self.patterns.append(re.compile(p, re.IGNORECASE))
            except re.error as e:
                raise ConfigError(f"curate.leakage.extra_patterns: '{p}' is not a valid regex ({e})") from None

    def apply(self, records: list[dict], ctx) -> list[Decision]:
        return for_revisions(records, lambda recs: [self.check(r.get("revised") or "") for r in recs])

    def check(self, text: str) -> Decision:
        for pattern in self.patterns:
            m = pattern.search(text)
            if m:
                return Decision(False, f"hindsight leakage: '{m.group(0)}'")
        return KEEP
