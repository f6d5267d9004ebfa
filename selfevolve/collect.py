"""Collect: snapshot what a round consumes into its folder — new consented chats the gateway captured and
chat-log files no earlier round consumed.

Every record read ends in ``conversations.jsonl`` (the training pool), ``heldout.jsonl`` (kept out of
training for compare) or ``import_rejected.jsonl`` with its reason; the manifest entry counts all three.

What "new" means is read back from the earlier rounds' manifests, never kept elsewhere: the highest
gateway ``seq`` they collected (a conversation that went on gets a new seq, so it comes back whole, with
more hindsight for its earlier turns) and the sha256 of every file they imported.

PII is scrubbed here (selfevolve/pii.py, ``pii`` config), before anything is written: every record of every
source — gateway captures and imported chat logs alike, the training pool, the held-out side and the
rejected records — so no later stage, training file or published dataset sees it. Conversation ids are kept.
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import manifest
from .formats import ImportReport, load_conversations, normalize_record
from .formats_norm import reason_code
from .config import resolve_input
from .layout import RoundLayout, RunLayout
from .pii import PiiConfig, scrubber
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
    pii: Counter | None = None
    """Entities scrubbed, per type; None when scrubbing is off (``pii.enabled: false``)."""

    @property
    def read(self) -> int:
        return (self.imported.read if self.imported else 0) + self.gateway_read

    @property
    def empty(self) -> bool:
        """Nothing new was read: a round on it would do no work."""
        return self.read == 0

    def line(self) -> str:
        skipped = f", {len(self.skipped_files)} file(s) already consumed" if self.skipped_files else ""
        pii = "off" if self.pii is None else ", ".join(f"{k} {v}" for k, v in sorted(self.pii.items())) or "none found"
        return (f"read {self.read} records (files {self.read - self.gateway_read}, gateway {self.gateway_read}"
                f"{skipped}): rejected {self.rejected}; conversations: train pool {self.conversations} + "
                f"held out {self.heldout}; PII scrubbed: {pii}")


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
            norm["meta"] = _reindex(conv["meta"], _index_map(conv["messages"], norm["messages"]))
            ok.append(norm)
    return ok, rejected, top


def _index_map(before: list[dict], after: list[dict]) -> dict[int, int]:
    """Message index in the store's export → index after normalisation, which drops empty messages and merges
    consecutive ones of a role; a dropped message maps nowhere."""
    out, j = {}, 0
    for i, m in enumerate(before):
        for k in range(j, len(after)):
            if m["content"] and after[k]["role"] == m["role"] and m["content"] in after[k]["content"]:
                out[i], j = k, k
                break
    return out


def _reindex(meta: dict, where: dict[int, int]) -> dict:
    """``served`` / ``adapters`` / ``feedback`` of the export moved to the normalised indices. A merged assistant
    message counts as served only when every part of it was: otherwise a client-written part would pass as the
    model's own words."""
    meta = dict(meta)
    parts: dict[int, list[int]] = {}
    for i, k in where.items():
        parts.setdefault(k, []).append(i)
    if "served" in meta:
        served = set(meta["served"])
        meta["served"] = sorted(k for k, idx in parts.items() if all(i in served for i in idx) and
                                any(i in served for i in idx))
    if "adapters" in meta:
        meta["adapters"] = {str(where[int(i)]): a for i, a in meta["adapters"].items() if int(i) in where}
    if "feedback" in meta:
        meta["feedback"] = [{**f, "message_index": where[f["message_index"]]} for f in meta["feedback"]
                            if f.get("message_index") in where]
    return meta


def _scrub(conversations: list[dict], rejected: list[dict], cfg: PiiConfig,
           report: CollectReport) -> tuple[list[dict], list[dict]]:
    """Every record with its PII replaced by typed placeholders, one for one (nothing dropped); the counts go
    to ``report.pii``. The scrubber (Presidio, seconds to import) is only built when there is something new."""
    if not cfg.enabled:
        return conversations, rejected
    s, report.pii = scrubber(cfg), Counter()
    out = []
    for c in conversations:
        c, counts = s.scrub_conversation(c)
        report.pii.update(counts)
        out.append(c)
    bad = []
    for r in rejected:  # any shape (a record that could not be read): every string in it
        r, counts = s.scrub_value(r)
        report.pii.update(counts)
        bad.append(r)
    return out, bad


def collect_round(rnd: RoundLayout, run: RunLayout, paths: list[Path], *, fmt: str = "auto", gateway: bool = True,
                  heldout_share: float = 0.0, skip_consumed: bool = True,
                  pii: PiiConfig | None = None, limits=None) -> CollectReport:
    """Write the round's snapshot and its manifest entry; returns the report (``empty`` when nothing was new:
    then nothing is written). ``skip_consumed=False`` imports files even when an earlier round had them.
    ``pii``: how PII is scrubbed (None: the defaults, on); ``limits``: the import caps (``data.limits``)."""
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
        conversations, rejected, report.imported = load_conversations(fresh, fmt=fmt, limits=limits)
        report.reasons.update(report.imported.reasons)
    if gateway:
        chats, bad, report.db_seq = _gateway(run, since)
        report.gateway_read, report.gateway_rejected = len(chats) + len(bad), len(bad)
        report.reasons.update(reason_code(r["reason"]) for r in bad)
        taken = {c["id"] for c in conversations}
        for c in chats:  # a file and the gateway may both use an id: the gateway's gets a suffix
            if c["id"] in taken:
                c["meta"]["original_id"], c["id"] = c["id"], f"{c['id']}-gw"
            taken.add(c["id"])
        conversations += chats
        rejected += bad
    if report.empty:
        return report
    conversations, rejected = _scrub(conversations, rejected, pii or PiiConfig(), report)
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
                "db_seq": report.db_seq, "pii": dict(report.pii) if report.pii is not None else None},
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
                               heldout_share=cfg.data.heldout_share, pii=cfg.pii,
                               limits=cfg.data.limits)
    except (FileNotFoundError, ValueError) as e:
        raise StageError(f"collect: {e}") from None
    if report.empty:
        n = ctx.rnd.number
        return StageResult(NAME, stop=f"nothing new to collect since round {n - 1}: no round opened, no model work"
                           if n > 1 else "nothing to collect: no chats captured and no input files")
    entry = ctx.entry(NAME)
    return StageResult(NAME, entry["counts"], report.line(), seconds=round(time.time() - t0, 1))


def collect_files(paths: list[Path], fmt: str, rnd: RoundLayout, pii: PiiConfig | None = None,
                  limits=None) -> ImportReport:
    """``selfevolve revise`` on files alone: import them all into the round (no held-out split, no gateway)."""
    report = collect_round(rnd, rnd.run, paths, fmt=fmt, gateway=False, skip_consumed=False, pii=pii, limits=limits)
    return report.imported or ImportReport()
