"""Near-duplicate removal: MinHash/LSH (datasketch) over word shingles of the question and the new answer.

The same question answered the same way teaches the model nothing new and over-weights it in training;
the first record of a group of near-duplicates is kept (earlier rounds' data comes first of all).
"""
from __future__ import annotations

from .base import KEEP, Decision, last_user


def text_of(context: list[dict], answer: str) -> str:
    """What two records are compared on: the message answered and the answer."""
    return last_user(context) + "\n" + answer


def shingles(text: str, n: int) -> set[str]:
    words = text.casefold().split()
    if len(words) <= n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


class DiversityFilter:
    name = "diversity"
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
            m = self.minhash(text_of(rec["context"], rec.get("revised") or ""))
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
