"""``selfevolve forget``: delete a user's (or one conversation's) chats from the store and from every round's
files, and say what was deleted (and which adapters already learnt from them).

What counts as one user's: every conversation whose stored ``user_hash`` is one the name may stand for
(:meth:`ChatStore.identities`: the request's ``user`` field, an API key, a per-user key's user), and, in the
round files, every gateway record whose ``meta.user`` is that user's export pseudonym (``meta.user_hash`` in
rounds collected before pseudonyms). From the conversation records found in a round (``conversations``, ``heldout``,
``import_rejected``) come their ids as collect wrote them (a renamed ``<id>-gw`` included); every per-turn
record of that round whose conversation is one of them goes too (signals, revisions and revise's journal,
curated, rejected, sft, dpo), and the accumulated ``train_sft`` / ``train_dpo`` records by the round each came
from. The HF datasets under ``dataset/`` are rewritten to match, and training checkpoints made on the old data
are removed, and so is the run's cache of greedy answers (``answers/``: it may answer their held-out turns).
Compare's files lose the records made from their turns too: the round's probes, and each comparison's probes,
generations and judgments of their held-out turns (its summary's aggregates stay, as its gate decision does), in
the rounds' ``eval/`` folders and the run's own (comparisons of sides that are not rounds).

Every round is rewritten, trained ones included: each round's curate accumulates the ``sft``/``dpo`` files of
all earlier rounds, and compare builds its probes from all curated files, so a record left in a trained
round would be trained on again by the next one. A round is *trained on* when its train stage completed and
left an adapter: its adapter already learnt from the records and is not changed (the report names it and the
count; retraining that round, or rolling back past it, removes their influence). Each manifest gets the new
file hashes, so finished stages stay finished instead of being redone on the old data.

Order, so that an interrupted ``forget`` is finished by running it again: per round, the manifest first,
then the per-turn files and datasets, then the conversation files the records are found by; the store last.
It holds the run's iterate lock: no round runs meanwhile.
"""
from __future__ import annotations

import hashlib
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import manifest
from .layout import EvalLayout, RoundLayout, RunLayout
from .records import dumps, iter_jsonl, replace_dir, write_atomic, write_json
from .store import ChatStore

CONVERSATION_FILES = ("conversations", "heldout", "import_rejected")
"""Round files of whole conversations: where the user's records are found."""
TURN_FILES = ("signals", "revisions", "revisions_journal", "curated", "rejected", "sft", "dpo", "train_sft",
              "train_dpo")
"""Round files of per-turn records (``<conversation id>#<index>``)."""
DATASETS = ("sft", "dpo", "train_sft", "train_dpo")


@dataclass
class Target:
    """What to forget: conversation ids in the store, user identities (hashes and export pseudonyms)."""
    ids: set[str] = field(default_factory=set)
    hashes: set[str] = field(default_factory=set)
    pseudonyms: set[str] = field(default_factory=set)

    def owns(self, rec: dict) -> bool:
        """A conversation record (or a gateway rejection holding one in ``raw``) of the target."""
        conv = rec.get("raw") if isinstance(rec.get("raw"), dict) else rec
        if rec.get("source") != "gateway" or not isinstance(conv, dict):
            return False
        meta = conv.get("meta") if isinstance(conv.get("meta"), dict) else {}
        return (rec.get("id") in self.ids or meta.get("original_id") in self.ids
                or meta.get("user") in self.pseudonyms or meta.get("user_hash") in self.hashes)


@dataclass
class ForgetReport:
    store: dict[str, int] = field(default_factory=dict)
    """Rows deleted per table of the store."""
    files: dict[str, int] = field(default_factory=dict)
    """Records removed per round file (``round-002/signals.jsonl``) or dataset (``round-002/dataset/sft``)."""
    removed: list[str] = field(default_factory=list)
    """Folders removed: training checkpoints made on the forgotten data."""
    kept_trained: dict[str, int] = field(default_factory=dict)
    """Trained rounds: how many of the target's records their adapters learnt from (the files are scrubbed)."""

    @property
    def found(self) -> bool:
        return bool(sum(self.store.get(t, 0) for t in ("conversations", "exchanges", "feedback"))
                    or any(self.files.values()) or any(self.kept_trained.values()))

    def lines(self) -> list[str]:
        rows = {t: n for t, n in self.store.items() if t != "wal_checkpoint_busy"}
        out = ["store: " + (", ".join(f"{t} {n}" for t, n in rows.items()) or "no chat store")]
        if self.store.get("wal_checkpoint_busy"):
            out.append("store: a reader held the WAL: the deleted rows' old pages leave it at the next checkpoint")
        out += [f"{name}: {n} records" for name, n in self.files.items() if n]
        out += [f"{name}: removed (trained on the forgotten data)" for name in self.removed]
        out += [f"{name}: its adapter learnt from {n} of these records (files scrubbed, adapter unchanged: "
                "retrain or roll back past it to remove them)" for name, n in self.kept_trained.items() if n]
        return out


def is_trained(rnd: RoundLayout) -> bool:
    """The round's train stage completed and left an adapter (a round that trained nothing is not trained on)."""
    entry = manifest.load(rnd.manifest)["stages"].get("train")
    return bool(entry and entry.get("status") == "complete" and rnd.adapter_weights.is_file())


def _read(path: Path) -> list[dict]:
    return list(iter_jsonl(path)) if path.is_file() else []


def _turn_conversation(rec: dict) -> str:
    cid = rec.get("conversation_id")
    return str(cid) if cid is not None else str(rec.get("id", "")).rsplit("#", 1)[0]


def found_ids(rounds: list[RoundLayout], target: Target) -> dict[int, set[str]]:
    """Per round number, the ids (as collect wrote them) of the target's conversations in that round: those of its
    training pool and held-out set (a rejected record's id may be a file record's too; it has no turns anyway)."""
    return {rnd.number: {str(r.get("id")) for name in ("conversations", "heldout")
                         for r in _read(getattr(rnd, name)) if target.owns(r)} for rnd in rounds}


def _split(rnd: RoundLayout, ids: dict[int, set[str]], target: Target) -> dict[str, tuple[list[dict], int]]:
    """Every file of the round that holds target records → (the records that stay, how many go)."""
    out = {}
    for name in CONVERSATION_FILES + TURN_FILES:
        recs = _read(getattr(rnd, name))
        if name in CONVERSATION_FILES:
            keep = [r for r in recs if not target.owns(r)]
        else:  # accumulated sets hold records of earlier rounds: each is matched against its own round's ids
            keep = [r for r in recs if _turn_conversation(r) not in ids.get(int(r.get("round", rnd.number)), ())]
        if len(keep) != len(recs):
            out[name] = (keep, len(recs) - len(keep))
    return out


def _compare_conversation(rec: dict) -> str | None:
    """The conversation a compare record came from: a held-out prompt's (``heldout-<conversation>#<message>``, in
    generations and judgments), a probe's source turn (``<conversation>#<turn>``); None for MT-Bench prompts."""
    pid = str(rec.get("id", ""))
    if pid.startswith("heldout-"):
        return pid.removeprefix("heldout-").rsplit("#", 1)[0]
    source = rec.get("source")
    return source.rsplit("#", 1)[0] if rec.get("kind") and isinstance(source, str) and "#" in source else None


def _split_compare(rnd: RoundLayout, conversations: set[str]) -> dict[Path, tuple[list[dict], int]]:
    """Compare's files of the round that hold the target's text → (the records that stay, how many go): the
    round's probes (questions from their turns) and, per comparison, the probes with both sides' answers and the
    held-out prompts with theirs (generations, judgments). Probes come from every round's curated files, held-out
    prompts from earlier rounds' too: matched against every round's ids. A gate decided on them stands, as a
    trained adapter does."""
    return _split_eval([rnd.probes], rnd.eval_root, conversations)


def _split_eval(files: list[Path], eval_root: Path, conversations: set[str]) -> dict[Path, tuple[list[dict], int]]:
    """``files`` and every comparison's probes, generations and judgments under ``eval_root`` that hold records
    of ``conversations`` → (the records that stay, how many go)."""
    files = files + [getattr(EvalLayout(d), name) for d in sorted(eval_root.glob("*")) if d.is_dir()
                     for name in ("probes", "generations", "judgments")]
    out = {}
    for path in files:
        recs = _read(path)
        keep = [r for r in recs if _compare_conversation(r) not in conversations]
        if len(keep) != len(recs):
            out[path] = (keep, len(recs) - len(keep))
    return out


def _rewrite_dataset(folder: Path, ids: dict[int, set[str]], number: int, dry_run: bool) -> int:
    """Drop the target's rows from an HF dataset folder (same features); returns how many went."""
    import datasets as hf_datasets

    ds = hf_datasets.load_from_disk(str(folder))
    rows = ds.to_list()
    keep = [r for r in rows if _turn_conversation(r) not in ids.get(int(r.get("round", number)), ())]
    if len(keep) != len(rows) and not dry_run:
        # from_list([]) has no columns at all: an empty dataset keeps its features through from_dict
        new = (hf_datasets.Dataset.from_list(keep, features=ds.features) if keep else
               hf_datasets.Dataset.from_dict({k: [] for k in ds.features}, features=ds.features))
        with replace_dir(folder) as tmp:
            new.save_to_disk(str(tmp), num_shards=None if len(new) else 1)  # 0 rows -> 0 shards, unloadable
    return len(rows) - len(keep)


def _text(recs: list[dict]) -> str:
    return "".join(dumps(r) + "\n" for r in recs)


def _rehash(rnd: RoundLayout, texts: dict[str, str], counts: dict[str, int]) -> None:
    """Record the rewritten files' new hashes wherever a stage entry lists them, and what forget removed."""
    path = rnd.manifest
    if not path.exists():
        return
    m = manifest.load(path)
    digests = {getattr(rnd, name).name: hashlib.sha256(t.encode("utf-8")).hexdigest() for name, t in texts.items()}
    for entry in m["stages"].values():
        for key in ("inputs", "outputs"):
            for fname in entry.get(key) or {}:
                if fname in digests:
                    entry[key][fname] = digests[fname]
    m.setdefault("forgotten", []).append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "records": counts})
    write_json(path, m)


def scrub_round(rnd: RoundLayout, ids: dict[int, set[str]], target: Target, report: ForgetReport,
                dry_run: bool = False) -> None:
    """Remove the target's records from one round's files (see the module's order)."""
    split = _split(rnd, ids, target)
    counts = {getattr(rnd, name).name: n for name, (_, n) in split.items()}
    compared = _split_compare(rnd, set().union(*ids.values()))
    counts |= {str(path.relative_to(rnd.dir)): n for path, (_, n) in compared.items()}
    for ds_name in DATASETS:
        folder = rnd.dataset(ds_name)
        if folder.is_dir():
            counts[f"dataset/{ds_name}"] = _rewrite_dataset(folder, ids, rnd.number, dry_run=True)
    if not any(counts.values()):
        return
    report.files.update({f"{rnd.dir.name}/{k}": n for k, n in counts.items() if n})
    if dry_run:
        return
    texts = {name: _text(keep) for name, (keep, _) in split.items()}
    compared_texts = {path: _text(keep) for path, (keep, _) in compared.items()}
    if rnd.probes in compared_texts:  # compare's recorded output: its new hash keeps compare finished
        texts["probes"] = compared_texts.pop(rnd.probes)
    _rehash(rnd, texts, {k: n for k, n in counts.items() if n})
    for path, text in compared_texts.items():
        write_atomic(path, text)
    for ds_name in DATASETS:
        if counts.get(f"dataset/{ds_name}"):
            _rewrite_dataset(rnd.dataset(ds_name), ids, rnd.number, dry_run=False)
    if rnd.train_ckpt.exists() and any(counts.get(k) for k in ("train_sft.jsonl", "train_dpo.jsonl",
                                                               "dataset/train_sft", "dataset/train_dpo")):
        shutil.rmtree(rnd.train_ckpt)
        report.removed.append(f"{rnd.dir.name}/{rnd.train_ckpt.name}")
    for name in sorted(texts, key=lambda n: n in CONVERSATION_FILES):  # the files records are found by: last
        write_atomic(getattr(rnd, name), texts[name])


def forget(run: RunLayout, *, users: list[str] = (), conversations: list[str] = (), dry_run: bool = False,
           log=print) -> ForgetReport:
    """Forget ``users`` (a name sent as ``user``, or an API key) and ``conversations`` (ids) everywhere. Holds the run's iterate lock. ``dry_run``: count only, change nothing."""
    from .loop import run_lock

    report, target = ForgetReport(), Target(ids=set(conversations))
    with run_lock(run):
        store = ChatStore(run.chats_db) if run.chats_db.exists() else None
        try:
            if store is not None:
                target.hashes = {h for u in users for h in store.identities(u)}
                target.pseudonyms = {store.pseudonym(h) for h in target.hashes}
                target.ids |= set(store.conversation_ids(sorted(target.hashes))) if target.hashes else set()
            elif users:
                log(f"no chat store at {run.chats_db}: users are found by their hashes, only rounds' "
                    "--conversation ids can be matched")
            rounds = run.rounds()
            ids = found_ids(rounds, target)
            for rnd in rounds:
                if is_trained(rnd):
                    report.kept_trained[rnd.dir.name] = sum(n for _, n in _split(rnd, ids, target).values())
                scrub_round(rnd, ids, target, report, dry_run=dry_run)
            # comparisons of sides that are not rounds (base vs base) keep held-out prompts in the run's eval/
            for path, (keep, n) in _split_eval([], run.eval_root, set().union(*ids.values())).items():
                report.files[str(path.relative_to(run.dir))] = n
                if not dry_run:
                    write_atomic(path, _text(keep))
            if any(ids.values()) and not dry_run and run.answers.exists():  # a cache that may answer their turns
                shutil.rmtree(run.answers)
                report.removed.append(run.answers.name)
            if store is not None:
                in_store = sorted(target.ids)
                report.store = (_count_rows(store, in_store, sorted(target.hashes)) if dry_run
                                else store.delete(in_store, sorted(target.hashes)))
        finally:
            if store is not None:
                store.close()
    return report


def _count_rows(store: ChatStore, ids: list[str], hashes: list[str]) -> dict[str, int]:
    """What :meth:`ChatStore.delete` would delete, counted (dry run)."""
    counts = Counter()
    for cid in ids:
        conv = store.get(cid)
        if conv:
            counts.update(conversations=1, exchanges=len(conv["exchanges"]), feedback=len(conv["feedback"]))
    return {t: counts.get(t, 0) for t in ("feedback", "exchanges", "conversations")}
