"""Collect: snapshot what a round consumes into its folder — new consented chats the gateway captured and
chat-log files no earlier round consumed.

Every record read ends in ``conversations.jsonl`` (the training pool), ``heldout.jsonl`` (kept out of
training for compare) or ``import_rejected.jsonl`` with its reason; the manifest entry counts all three.

What "new" means is read back from the earlier rounds' manifests, never kept elsewhere: the highest
gateway ``seq`` they collected (a conversation that went on gets a new seq, so it comes back whole, with
more hindsight for its earlier turns) and the sha256 of every file they imported.
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import manifest
from .formats import ImportReport, load_conversations, normalize_record
from .config import resolve_input
from .layout import RoundLayout, RunLayout
from .records import sha256_file, write_jsonl
from .stage import StageContext, StageError, StageResult, recorded
from .store import export_conversations

NAME = "collect"


@dataclass
class CollectReport:
    files: dict[str, str] = field(default_factory=dict)
    """Files imported now: path → sha256."""
    skipped_files: list[str] = field(default_factory=list)
    """Files an earlier round already consumed (same sha256)."""
    imported: ImportReport | None = None
    gateway_read: int = 0
    gateway_rejected: int = 0
    db_seq: int = 0
    """The highest gateway seq collected so far, this round included: the next round starts after it."""
    conversations: int = 0
    heldout: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)

    @property
    def read(self) -> int:
        return (self.imported.read if self.imported else 0) + self.gateway_read

    @property
    def empty(self) -> bool:
        """Nothing new was read: a round on it would do no work."""
        return self.read == 0

    def line(self) -> str:
        skipped = f", {len(self.skipped_files)} file(s) already consumed" if self.skipped_files else ""
        return (f"read {self.read} records (files {self.read - self.gateway_read}, gateway {self.gateway_read}"
                f"{skipped}): rejected {self.rejected}; conversations: train pool {self.conversations} + "
                f"held out {self.heldout}")


def path_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder (HF dataset) as its files' relative names and hashes."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path).as_posix()}\0{sha256_file(p)}\n".encode())
    return h.hexdigest()


def is_heldout(conversation_id: str, share: float) -> bool:
    """Stable split by a hash of the id: the same conversation lands on the same side in every round."""
    if share <= 0:
        return False
    return int(hashlib.sha256(conversation_id.encode()).hexdigest()[:8], 16) / 16 ** 8 < share


def consumed(run: RunLayout, before: int) -> tuple[set[str], int]:
    """sha256 of the files that rounds before ``before`` collected, and the highest gateway seq they took."""
    shas, seq = set(), 0
    for rnd in run.rounds():
        if rnd.number >= before:
            continue
        entry = manifest.load(rnd.manifest)["stages"].get("collect")
        if entry and entry.get("status") == "complete":
            shas |= set(entry.get("files", {}).values())
            seq = max(seq, int(entry["counts"].get("db_seq") or 0))
    return shas, seq


def _gateway(run: RunLayout, since: int) -> tuple[list[dict], list[dict], int]:
    """Consented conversations changed after ``since``, through the import rules (empty turns etc.)."""
    ok, rejected, top = [], [], since
    for conv in export_conversations(run.chats_db, since_id=since):
        top = max(top, int(conv["meta"]["seq"]))
        norm, reason = normalize_record({"id": conv["id"], "messages": conv["messages"]}, "gateway", "openai")
        if norm is None:
            rejected.append({"source": "gateway", "id": conv["id"], "reason": reason, "raw": conv})
        else:
            norm["meta"] = conv["meta"]
            ok.append(norm)
    return ok, rejected, top


def collect_round(rnd: RoundLayout, run: RunLayout, paths: list[Path], *, fmt: str = "auto", gateway: bool = True,
                  heldout_share: float = 0.0, skip_consumed: bool = True) -> CollectReport:
    """Write the round's snapshot and its manifest entry; returns the report (``empty`` when nothing was new:
    then nothing is written). ``skip_consumed=False`` imports files even when an earlier round had them."""
    started = time.time()
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"input not found: {p}")
    shas, since = consumed(run, rnd.number)
    report = CollectReport(db_seq=since)
    fresh = []
    for p in paths:
        digest = path_sha256(p)
        if (skip_consumed and digest in shas) or digest in report.files.values():
            report.skipped_files.append(str(p))
        else:
            fresh.append(p)
            report.files[str(p)] = digest
    conversations, rejected = [], []
    if fresh:
        conversations, rejected, report.imported = load_conversations(fresh, fmt=fmt)
        report.reasons.update(report.imported.reasons)
    if gateway:
        chats, bad, report.db_seq = _gateway(run, since)
        report.gateway_read, report.gateway_rejected = len(chats) + len(bad), len(bad)
        report.reasons.update(r["reason"] for r in bad)
        taken = {c["id"] for c in conversations}
        for c in chats:  # a file and the gateway may both use an id: the gateway's gets a suffix
            if c["id"] in taken:
                c["meta"]["original_id"], c["id"] = c["id"], f"{c['id']}-gw"
            taken.add(c["id"])
        conversations += chats
        rejected += bad
    if report.empty:
        return report
    train = [c for c in conversations if not is_heldout(c["id"], heldout_share)]
    held = [c for c in conversations if is_heldout(c["id"], heldout_share)]
    report.conversations, report.heldout, report.rejected = len(train), len(held), len(rejected)
    # Records in = records accepted + rejected; accepted records become conversations (FastChat chunks of
    # one chat rejoin into one), and every conversation lands on exactly one side of the split.
    imp = report.imported or ImportReport()
    if imp.accepted + imp.rejected != imp.read or report.rejected != imp.rejected + report.gateway_rejected \
            or report.conversations + report.heldout != imp.conversations + report.gateway_read - report.gateway_rejected:
        raise RuntimeError(f"collect lost records: {report.line()} (import: {imp.summary()})")
    write_jsonl(rnd.import_rejected, rejected)
    write_jsonl(rnd.heldout, held)
    write_jsonl(rnd.conversations, train)
    manifest.record_stage(
        rnd.manifest, "collect", inputs=[p for p in fresh if p.is_file()],
        outputs=[rnd.conversations, rnd.heldout, rnd.import_rejected], started=started,
        counts={"read": report.read, "files_read": report.read - report.gateway_read,
                "files_accepted": report.imported.accepted if report.imported else 0,
                "gateway_read": report.gateway_read, "conversations": report.conversations,
                "heldout": report.heldout, "rejected": report.rejected, "reasons": dict(report.reasons),
                "db_seq": report.db_seq},
        files=report.files, skipped_files=report.skipped_files, line=report.line())
    return report


def run(ctx: StageContext) -> StageResult:
    """What is new since the last round: ``data.inputs`` + ``--input`` files no earlier round consumed, and
    the gateway's consented chats after the last round's watermark. ``stop`` when nothing is new."""
    done = recorded(ctx, NAME, None)
    if done:
        return done
    cfg = ctx.cfg
    t0 = time.time()
    paths = [resolve_input(s) for s in cfg.data.inputs] + list(ctx.inputs)
    try:
        report = collect_round(ctx.rnd, ctx.run, paths, fmt=cfg.data.format, gateway=cfg.data.gateway,
                               heldout_share=cfg.data.heldout_share)
    except (FileNotFoundError, ValueError) as e:
        raise StageError(f"collect: {e}") from None
    if report.empty:
        n = ctx.rnd.number
        return StageResult(NAME, stop=f"nothing new to collect since round {n - 1}: no round opened, no model work"
                           if n > 1 else "nothing to collect: no chats captured and no input files")
    entry = ctx.entry(NAME)
    return StageResult(NAME, entry["counts"], report.line(), seconds=round(time.time() - t0, 1))


def collect_files(paths: list[Path], fmt: str, rnd: RoundLayout) -> ImportReport:
    """``selfevolve revise`` on files alone: import them all into the round (no held-out split, no gateway)."""
    report = collect_round(rnd, rnd.run, paths, fmt=fmt, gateway=False, skip_consumed=False)
    return report.imported or ImportReport()
