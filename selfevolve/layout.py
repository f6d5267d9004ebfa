"""The only module that knows file names under ``runs/``.

    runs/<name>/
      config.yaml                 resolved config of the run
      round-001/
        manifest.json             per stage: status, times, input/output sha256, counts
        conversations.jsonl       the conversations this round consumed
        import_rejected.jsonl     records that could not be imported, with reasons
        revisions.jsonl           one record per assistant turn (ok / failed + reason)
        revisions.journal.jsonl   work in progress of revise (gone once the stage completes)
        curated.jsonl             revisions every curate filter kept, with their scores
        rejected.jsonl            revisions a curate filter dropped, with filter, reason and score
        sft.jsonl                 this round's SFT records {id, round, prompt, completion}
        dpo.jsonl                 this round's preference records {id, round, prompt, chosen, rejected}
        train_sft.jsonl           every round's SFT records up to this one, deduplicated
        train_dpo.jsonl           every round's preference records up to this one, deduplicated
        dataset/                  the same four as HF datasets (save_to_disk): sft, dpo, train_sft, train_dpo
        card.md                   dataset card: counts per filter, judge win rate, length statistics
        lengths.png               length histogram, original vs revised
        filters.png               drops per filter
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RoundLayout:
    dir: Path

    @property
    def number(self) -> int:
        return int(self.dir.name.split("-")[1])

    @property
    def manifest(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def conversations(self) -> Path:
        return self.dir / "conversations.jsonl"

    @property
    def import_rejected(self) -> Path:
        return self.dir / "import_rejected.jsonl"

    @property
    def revisions(self) -> Path:
        return self.dir / "revisions.jsonl"

    @property
    def revisions_journal(self) -> Path:
        return self.dir / "revisions.journal.jsonl"

    @property
    def curated(self) -> Path:
        return self.dir / "curated.jsonl"

    @property
    def rejected(self) -> Path:
        return self.dir / "rejected.jsonl"

    @property
    def sft(self) -> Path:
        return self.dir / "sft.jsonl"

    @property
    def dpo(self) -> Path:
        return self.dir / "dpo.jsonl"

    @property
    def train_sft(self) -> Path:
        return self.dir / "train_sft.jsonl"

    @property
    def train_dpo(self) -> Path:
        return self.dir / "train_dpo.jsonl"

    @property
    def dataset_dir(self) -> Path:
        return self.dir / "dataset"

    def dataset(self, name: str) -> Path:
        """HF dataset folder: ``sft``, ``dpo``, ``train_sft`` or ``train_dpo``."""
        return self.dataset_dir / name

    @property
    def card(self) -> Path:
        return self.dir / "card.md"

    @property
    def lengths_plot(self) -> Path:
        return self.dir / "lengths.png"

    @property
    def filters_plot(self) -> Path:
        return self.dir / "filters.png"


@dataclass(frozen=True)
class RunLayout:
    dir: Path

    @classmethod
    def of(cls, root: str | Path, name: str) -> "RunLayout":
        return cls(Path(root) / name)

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    def round(self, n: int) -> RoundLayout:
        return RoundLayout(self.dir / f"round-{n:03d}")

    def rounds(self) -> list[RoundLayout]:
        if not self.dir.exists():
            return []
        found = [p for p in self.dir.glob("round-[0-9][0-9][0-9]") if p.is_dir()]
        return [RoundLayout(p) for p in sorted(found)]

    def latest_round(self) -> RoundLayout | None:
        rounds = self.rounds()
        return rounds[-1] if rounds else None
