"""``repetition``: an answer that loops does not train, on either route.

A small model often falls into a loop ("Dit is een korte samenvatting ..." six times, "I added a comma after ..."
until the token limit) that vLLM's repetition detection at revise time does not stop, and a user may thank it anyway
or correct it into another loop. Such an answer teaches nothing but the loop, and it is also how 9 of the 15
payloads that passed the default chain of the seventeenth session reached training: a loop that echoes the user's
request (the false premise, the planted link) over and over (docs/bench/injection_real.md).

The measure is the share of word n-grams that repeat an earlier one (1 - distinct/total), the score the
``perplexity`` filter has always used, with its default (3-grams, 0.3); code blocks and table rows are left out,
since their lines repeat by nature. It reads the answer that trains: a revision, or the original of a turn the
user confirmed. Measured against blind labels (scripts/bench_repetition.py, docs/bench/repetition.md): on the 135M
model's own answers precision 37/40 and recall 37/41 (a third of them loop; the misses are mostly loops inside code);
of real ChatGPT answers (ShareGPT, a sample it was not tuned on) it drops 1.4%, templated lists and none a loop; of
the written normal answers of the injection splits none.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import check_ranges
from .base import Decision, answer
from .injection_text import FENCE_RE  # a fenced code block, or one the answer never closed


def prose(text: str) -> str:
    """``text`` without its code blocks and table rows: what repeats there is structure, not a loop."""
    return "\n".join(line for line in FENCE_RE.sub("\n", text).splitlines() if not line.lstrip().startswith("|"))


def repetition(text: str, n: int) -> float:
    """Share of the word n-grams of ``text``'s prose that repeat an earlier one: 0 for ordinary prose, near 1 for a
    loop."""
    words = prose(text).casefold().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


@dataclass
class RepetitionFilterConfig:
    enabled: bool = True
    """Drops answers that loop: their share of repeated word n-grams is above ``max_repetition``."""
    max_repetition: float = 0.3
    """Largest share of repeated word n-grams (1 - distinct/total) kept; loops score near 1."""
    ngram: int = 3
    """Words per n-gram."""

    def validate(self, key: str) -> None:
        check_ranges(self, key, unit=("max_repetition",), positive=("ngram",))


class RepetitionFilter:
    name = "repetition"
    Config = RepetitionFilterConfig
    uses_backend = uses_judge = False

    def __init__(self, cfg):
        self.cfg = cfg

    def apply(self, records: list[dict], ctx) -> list[Decision]:
        return [self.check(answer(r)) for r in records]

    def check(self, text: str) -> Decision:
        rep = repetition(text, self.cfg.ngram)
        if rep > self.cfg.max_repetition:
            return Decision(False, f"loops (repeated {self.cfg.ngram}-gram share {rep:.2f} > max_repetition="
                                   f"{self.cfg.max_repetition})", round(rep, 4))
        return Decision(True, score=round(rep, 4))
