"""The only module that knows file names under ``runs/``.

    runs/<name>/
      config.yaml                 resolved config of the run
      round-001/
        manifest.json             per stage: status, times, input/output sha256, counts
        conversations.jsonl       the conversations this round consumed (training pool)
        heldout.jsonl             conversations held out from training (data.heldout_share), for compare
        import_rejected.jsonl     records that could not be imported, with reasons
        signals.jsonl             the hindsight signal of every assistant turn: confirmed / corrected / unclear
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
        adapter/                  the round's LoRA adapter (adapter_model.safetensors + adapter_config.json)
        train_meta.json           training config, sha256 of the training data, metrics (loss, tokens/s, steps)
        train_ckpt/               Trainer checkpoints while training (sft/, dpo/, fingerprint.json,
                                  <phase>-final/ with phase_metrics.json; gone once the adapter is written)
        probes.jsonl              taught / reworded / kept probes: questions asked fresh, what a right answer holds
        eval/<A>_vs_<B>/          a comparison: generations, judgments, probe answers, summary.json, report.md, *.png;
                                  .answers/ (sampled answers) while it runs (a rerun after a crash reuses them)
      eval/<A>_vs_<B>/            a comparison of two sides that are not rounds (base vs base)
      answers/                    greedy answers of every comparison, kept for later rounds (a cache)
      report.md, report.png       every round's probes, comparisons and drift monitors (`selfevolve report`)
      publish/round-NNN/          a round ready for the Hub: adapter/, model card, dataset/ (`selfevolve publish`)
      chats.sqlite                the gateway's captured conversations + feedback (SQLite, WAL; selfevolve/store.py)
      chats.salt                  the salt of the store's user hashes (mode 0600, never exported)
      current.json                which adapter is live: {"live": "se-r003" | null (base), "previous", "history"}
      serve.json                  the running gateway {url, pid, started} (written by `selfevolve serve`, removed at exit)
      admin.key                   the gateway's admin key (mode 0600), so `selfevolve iterate` can deploy to it
      user_keys.json              per-user chat keys, only their SHA-256 (mode 0600; `selfevolve keys issue|revoke|list`)
      iterate.lock                held (flock) while a round runs: two `iterate`s never work on one run
      vllm.log                    stdout/stderr of the vLLM server started by `selfevolve serve`
      staged-adapters/            private 0700 copies of the adapters vLLM loads (checked copies; deploy makes them)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ADAPTER_WEIGHTS = "adapter_model.safetensors"
"""The LoRA weights file of an adapter folder (PEFT's name; vLLM loads it)."""
ADAPTER_CONFIG = "adapter_config.json"
"""The LoRA config file of an adapter folder."""
ROUND_DIR = re.compile(r"round-(\d{3,})")
"""A round folder's name; ``round_dir_name`` writes it."""


def round_dir_name(n: int) -> str:
    return f"round-{n:03d}"


def salt_beside(db: Path) -> Path:
    """The salt file of a chat store: beside the database, same stem (``chats.sqlite`` → ``chats.salt``)."""
    return Path(db).with_suffix(".salt")


def _at(name: str, doc: str | None = None) -> property:
    """A read-only ``self.dir / name`` property: each layout below is a table of its names, one line each."""
    def path(self) -> Path:
        return self.dir / name

    return property(path, doc=doc)


@dataclass(frozen=True)
class EvalLayout:
    """One comparison's folder, ``eval/<A>_vs_<B>/`` (selfevolve/compare.py writes it, summary.json last)."""
    dir: Path

    summary = _at("summary.json")
    generations = _at("generations.jsonl")
    judgments = _at("judgments.jsonl")
    probes = _at("probes.jsonl", "Both sides' answers to the probes, scored (selfevolve/probes.py).")
    report = _at("report.md")
    winrate_plot = _at("winrate.png")
    lengths_plot = _at("lengths.png")
    answers_cache = _at(".answers", "Sampled model answers kept while the comparison runs (compare_phases."
                                    "AnswerCache): a rerun after a crash reuses them; removed once summary.json "
                                    "is written.")


def _finished(root: Path) -> list[EvalLayout]:
    folders = sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
    return [EvalLayout(p) for p in folders if EvalLayout(p).summary.is_file()]


def phase_metrics(phase_dir: Path) -> Path:
    """Metrics of a finished training phase, kept beside its adapter until the round's adapter is written."""
    return phase_dir / "phase_metrics.json"


@dataclass(frozen=True)
class RoundLayout:
    dir: Path

    @property
    def number(self) -> int:
        return int(self.dir.name.split("-")[1])

    @property
    def run(self) -> "RunLayout":
        """The run this round belongs to."""
        return RunLayout(self.dir.parent)

    signals = _at("signals.jsonl", "The hindsight signal of every assistant turn of ``conversations.jsonl`` "
                                   "(selfevolve/signals.py).")
    probes = _at("probes.jsonl", "Questions asked fresh in compare: taught (corrected), reworded, kept (confirmed) "
                                 "(selfevolve/probes.py).")
    manifest = _at("manifest.json")
    conversations = _at("conversations.jsonl")
    heldout = _at("heldout.jsonl", "Conversations kept out of training (never revised), used as held-out prompts "
                                   "by compare.")
    import_rejected = _at("import_rejected.jsonl")
    revisions = _at("revisions.jsonl")
    revisions_journal = _at("revisions.journal.jsonl")
    curated = _at("curated.jsonl")
    rejected = _at("rejected.jsonl")
    sft = _at("sft.jsonl")
    dpo = _at("dpo.jsonl")
    train_sft = _at("train_sft.jsonl")
    train_dpo = _at("train_dpo.jsonl")
    dataset_dir = _at("dataset")

    def dataset(self, name: str) -> Path:
        """HF dataset folder: ``sft``, ``dpo``, ``train_sft`` or ``train_dpo``."""
        return self.dataset_dir / name

    card = _at("card.md")
    lengths_plot = _at("lengths.png")
    filters_plot = _at("filters.png")
    adapter = _at("adapter")
    train_meta = _at("train_meta.json")

    @property
    def adapter_weights(self) -> Path:
        return self.adapter / ADAPTER_WEIGHTS

    train_ckpt = _at("train_ckpt")

    @property
    def train_fingerprint(self) -> Path:
        """What the checkpoints in train_ckpt/ were made from (data sha256 + config): others are not resumed."""
        return self.train_ckpt / "fingerprint.json"

    @property
    def train_worker_config(self) -> Path:
        """The config the processes of ``accelerate launch`` read (``train.num_processes`` > 1)."""
        return self.train_ckpt / "worker_config.yaml"

    def train_phase_ckpt(self, phase: str) -> Path:
        """Trainer output_dir of one phase (``sft`` or ``dpo``): checkpoint-N/ folders."""
        return self.train_ckpt / phase

    def train_phase_done(self, phase: str) -> Path:
        """The finished adapter of one phase, kept until the round's adapter is written."""
        return self.train_ckpt / f"{phase}-final"

    eval_root = _at("eval")

    def eval_dir(self, label: str) -> Path:
        """One comparison's folder, ``<A>_vs_<B>``."""
        return self.eval_root / label

    def comparisons(self) -> list[EvalLayout]:
        """This round's finished comparisons (those with a summary), by name."""
        return _finished(self.eval_root)


@dataclass(frozen=True)
class RunLayout:
    dir: Path

    @classmethod
    def of(cls, root: str | Path, name: str) -> "RunLayout":
        return cls(Path(root) / name)

    config = _at("config.yaml")

    def round(self, n: int) -> RoundLayout:
        return RoundLayout(self.dir / round_dir_name(n))

    def rounds(self) -> list[RoundLayout]:
        if not self.dir.exists():
            return []
        found = [p for p in self.dir.iterdir() if p.is_dir() and ROUND_DIR.fullmatch(p.name)]
        return [RoundLayout(p) for p in sorted(found, key=lambda p: int(ROUND_DIR.fullmatch(p.name)[1]))]

    def round_or_latest(self, n: int | None) -> RoundLayout:
        """Round ``n``; without one, the latest round (round 1 in a new run)."""
        if n is None:
            latest = self.latest_round()
            n = latest.number if latest else 1
        return self.round(n)

    def latest_round(self) -> RoundLayout | None:
        rounds = self.rounds()
        return rounds[-1] if rounds else None

    @property
    def eval_root(self) -> Path:
        """The comparisons of sides of which neither is a round."""
        return self.dir / "eval"

    def eval_dir(self, label: str) -> Path:
        """A comparison of two sides of which neither is a round (``base_vs_base``)."""
        return self.eval_root / label

    def comparisons(self) -> list[EvalLayout]:
        """Finished comparisons of sides that are not rounds."""
        return _finished(self.eval_root)

    def publish_dir(self, n: int) -> Path:
        """Round N's Hub-ready folder (``selfevolve publish``): adapter/, README.md, dataset/."""
        return self.dir / "publish" / round_dir_name(n)

    answers = _at("answers", "Greedy answers of every comparison of the run, by model, adapter content, messages "
                             "and sampling (compare_phases.AnswerCache): a later round reads the live side's "
                             "answers instead of generating them again. A cache: deleting it costs only time.")
    report = _at("report.md")
    report_plot = _at("report.png")
    chats_db = _at("chats.sqlite", "SQLite store of the conversations the gateway captured (selfevolve/store.py).")

    @property
    def chats_salt(self) -> Path:
        """The salt of the store's user hashes, mode 0600, kept out of the database (:func:`salt_beside`)."""
        return salt_beside(self.chats_db)

    current = _at("current.json", "Which adapter is live (selfevolve/deploy.py); written atomically (tmp + rename).")
    serve_info = _at("serve.json", "Where the running gateway listens ({url, pid, started}); gone when it stops.")
    admin_key = _at("admin.key", "The running gateway's admin key, mode 0600 (selfevolve/gateway.py writes, "
                                 "loop.py reads).")
    user_keys = _at("user_keys.json", "Per-user chat keys, hashed, mode 0600 (selfevolve/userkeys.py: `selfevolve "
                                      "keys` writes, the gateway reads).")
    lock = _at("iterate.lock")
    vllm_log = _at("vllm.log", "stdout/stderr of the vLLM server process (selfevolve/serve.py).")

    def replica_log(self, i: int) -> Path:
        """stdout/stderr of vLLM server ``i`` of ``serve.replicas`` (the first one's is :attr:`vllm_log`)."""
        return self.vllm_log if i == 0 else self.dir / f"vllm-{i}.log"

    staged_adapters = _at("staged-adapters", "Private (0700) copies of the adapters the served vLLM loads, one "
                                             "folder each: checked after copying, so what was checked is what vLLM "
                                             "reads (selfevolve/adapters.py stages them, deploy.py loads from there).")
