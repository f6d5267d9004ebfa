"""Self-consistency: would the model revise this turn again, and what would it say?

Each turn is revised ``samples`` more times with the record's own strategy, at a higher temperature,
all calls in one backend batch. A verdict the model does not repeat is noise, not a lesson: the turn is
kept only when the share of ``revise`` verdicts (the record's own counted) reaches ``agreement``. The kept
revision is the most central one (highest mean token-set Jaccard similarity to the other candidates),
which discards the idiosyncratic sample in favour of what the samples agree on. A sample only becomes a
candidate when it passes the structural and leakage checks: filters earlier in the order never saw it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..backends.base import Sampling, chat_all
from ..errors import check_ranges
from ..prompts import OutputError, get_strategy
from .base import Decision, for_revisions
from .leakage import LeakageFilter
from .structural import StructuralFilter


def conversation_of(rec: dict) -> tuple[dict, int]:
    """The conversation and turn index the record was revised from, rebuilt from the record."""
    messages = rec["context"] + [{"role": "assistant", "content": rec["original"]}] + rec["aftermath"]
    return {"id": rec["conversation_id"], "messages": messages}, len(rec["context"])


def jaccard(a: str, b: str) -> float:
    x, y = set(a.casefold().split()), set(b.casefold().split())
    return len(x & y) / len(x | y) if x | y else 1.0


def central(texts: list[str]) -> int:
    """Index of the text most similar on average to the others (the first one on ties)."""
    if len(texts) == 1:
        return 0
    means = [sum(jaccard(t, u) for j, u in enumerate(texts) if j != i) / (len(texts) - 1)
             for i, t in enumerate(texts)]
    return max(range(len(texts)), key=lambda i: (means[i], -i))


@dataclass
class ConsistencyFilterConfig:
    enabled: bool | None = None
    """None (default) = on only when ``judge.kind: openai`` points at another model: this filter's verdict rests
    on a model judging, and the embedded 135M model judges at chance (its pairwise judge flipped with the order
    on 81 of 91 records; its keep/revise verdict said "revise" for 29/30 wrong and 10/10 right answers: README).
    True/False force it. Samples the revision ``samples`` more times with the record's own strategy; keeps the turn when
    enough verdicts say ``revise`` and replaces the revision by the most central one."""
    samples: int = 2
    """Extra revisions sampled per turn (each costs the strategy's calls). With ``agreement`` 0.67, 2 of the
    3 verdicts (the record's own included) must say ``revise``."""
    agreement: float = 0.67
    """Share of ``revise`` verdicts (the record's own included) needed to keep the turn."""
    temperature: float = 0.8
    """Sampling temperature of the extra revisions: they must differ to say anything."""

    def validate(self, key: str) -> None:
        # temperature > 0: greedy samples would all repeat the record's own revision and prove nothing
        check_ranges(self, key, positive=("samples", "temperature"), unit=("agreement",))


class ConsistencyFilter:
    name = "self_consistency"
    Config = ConsistencyFilterConfig
    uses_backend, uses_judge = True, False

    def __init__(self, cfg):
        self.cfg = cfg

    def apply(self, records: list[dict], ctx) -> list[Decision]:
        return for_revisions(records, lambda recs: self._apply(recs, ctx))

    def _apply(self, records: list[dict], ctx) -> list[Decision]:
        if not records:
            return []
        rev = ctx.cfg.revise
        batch, samplings, schemas, slots = [], [], [], []
        for i, rec in enumerate(records):
            strategy = get_strategy(rec["strategy"])
            conv, turn = conversation_of(rec)
            calls = strategy.calls(conv, turn)
            for k in range(self.cfg.samples):
                for name, messages in calls.items():
                    cap = rev.critique_max_tokens if name == "critique" else rev.max_tokens
                    batch.append(messages)
                    samplings.append(Sampling(self.cfg.temperature, rev.top_p, cap))
                    schemas.append(strategy.schemas[name])
                    slots.append((i, k, name))
        gens = chat_all(ctx.backend, batch, samplings, schemas, "self_consistency (the served model)")
        outputs: list[list[dict]] = [[{} for _ in range(self.cfg.samples)] for _ in records]
        for (i, k, name), gen in zip(slots, gens, strict=True):
            if gen.finish_reason == "stop":  # a truncated or failed call leaves the sample unparseable
                outputs[i][k][name] = gen.text
        structural, leakage = StructuralFilter(ctx.cfg.curate.structural), LeakageFilter(ctx.cfg.curate.leakage)

        def usable(rec: dict, text: str) -> bool:
            return structural.check({**rec, "revised": text}).keep and leakage.check(text).keep

        return [self.decide(rec, outputs[i], usable) for i, rec in enumerate(records)]

    def decide(self, rec: dict, outputs: list[dict], usable=lambda rec, text: True) -> Decision:
        strategy = get_strategy(rec["strategy"])
        conv, turn = conversation_of(rec)
        candidates = [(0, rec["revised"])]  # index 0 is the record's own revision, 1..k the samples
        votes = int(rec.get("verdict") == "revise")
        for k, out in enumerate(outputs, 1):
            try:
                parsed = strategy.parse(out, conv, turn)
            except (OutputError, KeyError):  # KeyError: one of the sample's calls did not finish
                continue
            if parsed["verdict"] == "revise":
                votes += 1
                if usable(rec, parsed["revised"]):
                    candidates.append((k, parsed["revised"]))
        share = votes / (len(outputs) + 1)
        chosen, text = candidates[central([t for _, t in candidates])]
        info = {"samples": len(outputs), "revise_votes": votes, "agreement": round(share, 4), "chosen": chosen}
        if share < self.cfg.agreement:
            return Decision(False, f"self-consistency {votes}/{len(outputs) + 1} revise verdicts "
                                   f"< agreement={self.cfg.agreement}", share, {"consistency": info})
        update = {"consistency": info}
        if chosen != 0:  # the first revision stays on the record, for the audit trail
            update.update(revised=text, revised_first=rec["revised"])
        return Decision(True, None, share, update)
