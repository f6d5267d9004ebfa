"""The only module that knows file names under ``runs/``.

    runs/<name>/
      config.yaml                 resolved config of the run
      round-001/
        manifest.json             per stage: status, times, input/output sha256, counts
        conversations.jsonl       the conversations this round consumed
        import_rejected.jsonl     records that could not be imported, with reasons
        revisions.jsonl           one record per assistant turn (ok / failed + reason)
        revisions.journal.jsonl   work in progress of revise (gone once the stage completes)
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
