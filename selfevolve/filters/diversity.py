"""Near-duplicate removal: MinHash/LSH (datasketch) over word shingles of the question and the new answer.

The same question answered the same way teaches the model nothing new and over-weights it in training;
the first record of a group of near-duplicates is kept (earlier rounds' data comes first of all).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, check_ranges
from .base import KEEP, Decision, answer, last_user


def text_of(context: list[dict], answer: str) -> str:
    """What two records are compared on: the message answered and the answer."""
    return last_user(context) + "\n" + answer


def shingles(text: str, n: int) -> set[str]:
    words = text.casefold().split()
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclass
class DiversityFilterConfig:
    enabled: bool = True
    """Near-duplicate removal with MinHash/LSH over the last user message + revised answer, within the
    round and against earlier rounds' kept data; the first of duplicates is kept."""
    threshold: float = 0.8
    """Estimated Jaccard similarity of word shingles at or above which two records are duplicates."""
    num_perm: int = 128
    """MinHash permutations: more is a finer similarity estimate, at more CPU."""
    shingle: int = 3
    """Words per shingle."""

    def validate(self, key: str) -> None:
        check_ranges(self, key, left_open_unit=("threshold",), positive=("num_perm", "shingle"))
        if self.enabled:
            # datasketch fits bands x rows to the pair and refuses some (0.9 needs num_perm >= ~128): ask it now,
            # not after revise has run
            from datasketch import MinHashLSH

            try:
                MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
            except ValueError as e:
                raise ConfigError(f"{key}: threshold={self.threshold} with num_perm={self.num_perm}: {e} "
                                  f"(raise {key}.num_perm)") from None


class DiversityFilter:
    name = "diversity"
    Config = DiversityFilterConfig
    uses_backend = uses_judge = False

    def __init__(self, cfg):
        self.cfg = cfg

    def minhash(self, text: str):
        from datasketch import MinHash

        m = MinHash(num_perm=self.cfg.num_perm, seed=1)  # fixed seed: the same text, the same signature
        m.update_batch([s.encode("utf-8") for s in shingles(text, self.cfg.shingle)])
        return m

    def apply(self, records: list[dict], ctx) -> list[Decision]:
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=self.cfg.threshold, num_perm=self.cfg.num_perm)
        hashes: dict[str, object] = {}
        for key, text in ctx.earlier:
            self._insert(lsh, hashes, key, self.minhash(text))
        out = []
        for rec in records:
            m = self.minhash(text_of(rec["context"], answer(rec)))
            # LSH finds candidates; the estimated Jaccard confirms them (LSH has false positives).
            hits = [(hashes[k].jaccard(m), k) for k in lsh.query(m)]
            hits = [h for h in hits if h[0] >= self.cfg.threshold]
            if hits:
                sim, key = max(hits)
                out.append(Decision(False, f"near-duplicate of {key}", round(sim, 4)))
                continue
            self._insert(lsh, hashes, rec["id"], m)
            out.append(KEEP)
        return out

    @staticmethod
    def _insert(lsh, hashes: dict, key: str, m) -> None:
        if key not in hashes:  # datasketch refuses a key twice; ids are unique, this guards bad input
            hashes[key] = m
            lsh.insert(key, m)
