"""Collect: snapshot the conversations a round consumes (imported chat logs) into the round folder.

Every record read ends in ``conversations.jsonl`` or in ``import_rejected.jsonl`` with its reason.
"""
from __future__ import annotations

import time
from pathlib import Path

from . import manifest
from .formats import ImportReport, load_conversations
from .layout import RoundLayout
from .records import write_jsonl


def collect_files(paths: list[Path], fmt: str, rnd: RoundLayout) -> ImportReport:
    started = time.time()
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"input not found: {p}")
    conversations, rejected, report = load_conversations(paths, fmt=fmt)
    write_jsonl(rnd.import_rejected, rejected)
    write_jsonl(rnd.conversations, conversations)
    manifest.record_stage(
        rnd.manifest, "collect", inputs=[p for p in paths if p.is_file()],
        outputs=[rnd.conversations, rnd.import_rejected], started=started,
        counts={"read": report.read, "accepted": report.accepted, "rejected": report.rejected,
                "conversations": report.conversations, "reasons": dict(report.reasons)},
        sources=[str(p) for p in paths],
    )
    return report
