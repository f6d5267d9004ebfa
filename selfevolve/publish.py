"""Publish a round: its adapter, a model card with the round's evaluation, and the data it trained on.

    selfevolve publish --round N [--out DIR] [--repo ID] [--private/--public] [--force]

Writes a Hub-ready folder (default ``runs/<run>/publish/round-NNN/``, built in a temporary sibling and renamed
into place, so a reader never sees half of one):

    adapter/             a copy of round-NNN/adapter/ (PEFT: adapter_config.json + adapter_model.safetensors)
    README.md            model card: YAML front matter (base_model, library_name: peft, license, tags), the
                         round's evaluation (probes, pairwise judge, drift, gate), how it was trained
    dataset/             train_sft.jsonl, train_dpo.jsonl (what the adapter trained on) + README.md (dataset card)

With a repo (``--repo`` or ``publish.repo``) and a token (``HF_TOKEN`` or huggingface_hub's stored login) the
folder is pushed: ``HfApi().create_repo(exist_ok=True)`` then ``upload_folder``. Without a token the push is
refused (:class:`PublishError`, exit 2) and the folder stays for a later push.

Refused: a round with no adapter, or whose adapter is not the one train_meta.json describes (the card's
figures would be another adapter's); a round whose gate did not promote it (or never decided) unless
``force``, and the card then says it was published without promotion.
"""
from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import manifest
from .adapters import is_adapter
from .errors import ConfigError
from .records import read_jsonl, replace_dir, sha256_file, write_atomic


@dataclass
class PublishConfig:
    repo: str = ""
    """Hub repo id (``user/name``) ``selfevolve publish`` pushes to when ``--repo`` is not given; empty: write the
    folder only."""
    private: bool = True
    """Create the repo private (``--public`` overrides): the data holds users' chats."""
    license: str = "apache-2.0"
    """The card's license: the adapter is a derivative of the base model (SmolLM2 and Qwen2.5 are Apache-2.0)."""

    def validate(self, key: str) -> None:
        if self.repo and not REPO_ID.fullmatch(self.repo):
            raise ConfigError(f"{key}.repo: {self.repo!r} is not a Hub repo id (user/name)")
        if not self.license.strip():
            raise ConfigError(f"{key}.license: must not be empty")


REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
"""A Hub repo id: ``owner/name``."""


class PublishError(ValueError):
    """A round that cannot be published, or a push that cannot be made; the CLI prints it (exit 2)."""


@dataclass
class Evidence:
    """What a round's cards are made of, read from its folder."""

    round: int
    decision: dict | None = None
    """The gate's decision (manifest ``stages.gate.decision``); None when the gate never ran."""
    summary: dict | None = None
    """The comparison the gate decided on (compare's summary.json); None when none."""
    train_meta: dict = field(default_factory=dict)
    """The round's train_meta.json (config, examples, loss per phase); empty when missing."""
    curate: dict = field(default_factory=dict)
    """The round's curate manifest entry (counts, filter order)."""


@dataclass
class PublishResult:
    folder: Path
    """The folder written (adapter/, README.md, dataset/)."""
    url: str | None = None
    """The repo's URL when pushed."""
    forced: bool = False
    """Published although the gate did not promote the round."""


def evidence(rnd) -> Evidence:
    stages = manifest.load(rnd.manifest)["stages"]
    gate, compare = stages.get("gate") or {}, stages.get("compare") or {}
    ev = Evidence(rnd.number, decision=gate.get("decision") if gate.get("status") == "complete" else None,
                  curate=stages.get("curate") or {})
    if compare.get("outputs"):
        from .gate import summary_path

        path = summary_path(rnd.dir, compare)
        ev.summary = json.loads(path.read_text()) if path.is_file() else None
    if rnd.train_meta.is_file():
        ev.train_meta = json.loads(rnd.train_meta.read_text())
    return ev


def refusal(rnd, ev: Evidence) -> tuple[str | None, str | None]:
    """(why the round cannot be published at all, why it needs ``--force``); None where nothing stands in the way."""
    if not is_adapter(rnd.adapter):
        return f"round {rnd.number} has no adapter in {rnd.adapter}: run `selfevolve train --round {rnd.number}`", None
    recorded = ev.train_meta.get("adapter_sha256")
    if recorded and recorded != sha256_file(rnd.adapter_weights):
        return (f"{rnd.adapter_weights} is not the adapter train_meta.json describes (sha256 differs): retrain "
                f"or restore it"), None
    if ev.decision is None:
        return None, f"round {rnd.number} has no gate decision (run `selfevolve gate --round {rnd.number}`)"
    if not ev.decision.get("promote"):
        return None, f"round {rnd.number}'s gate did not promote it: {ev.decision.get('reason', '')}"
    return None, None


def dataset_counts(run, rnd) -> dict:
    """How the published SFT records break down: by hindsight signal label and by what they train on
    (``revised``: a corrected turn's revision; ``original``: a confirmed turn's answer), and by round."""
    curated: dict[str, dict] = {}
    for r in run.rounds():  # oldest first: a turn curated again later wins, as in curate's accumulate
        if r.number <= rnd.number and r.curated.is_file():
            curated.update({c["id"]: c for c in read_jsonl(r.curated)})
    sft = read_jsonl(rnd.train_sft) if rnd.train_sft.is_file() else []
    dpo = read_jsonl(rnd.train_dpo) if rnd.train_dpo.is_file() else []
    label, trains_on = Counter(), Counter()
    for s in sft:
        c = curated.get(s["id"])
        label[((c or {}).get("signal") or {}).get("label", "no signal" if c else "not found")] += 1
        trains_on["original" if (c or {}).get("use") == "original" else "revised" if c else "not found"] += 1
    return {"sft": len(sft), "dpo": len(dpo), "label": dict(label), "trains_on": dict(trains_on),
            "rounds": dict(sorted(Counter(s["round"] for s in sft).items()))}


def build_folder(cfg, run, rnd, out: Path, *, repo: str = "", forced_by: str | None = None,
                 ev: Evidence | None = None) -> Path:
    """Write the publish folder ``out`` (replaced whole); ``forced_by``: why the gate would have refused."""
    from .publish_cards import dataset_card, model_card

    ev = ev or evidence(rnd)
    pc = cfg.publish
    counts = dataset_counts(run, rnd)
    with replace_dir(out) as tmp:
        shutil.copytree(rnd.adapter, tmp / "adapter")
        (tmp / "dataset").mkdir()
        for src in (rnd.train_sft, rnd.train_dpo):
            if src.is_file():
                shutil.copy2(src, tmp / "dataset" / src.name)
        write_atomic(tmp / "dataset" / "README.md", dataset_card(cfg, pc, ev, counts))
        write_atomic(tmp / "README.md", model_card(cfg, pc, ev, counts, repo=repo, forced_by=forced_by))
    return out


def find_token() -> str | None:
    """``HF_TOKEN`` or the token ``hf auth login`` stored (huggingface_hub's own lookup)."""
    from huggingface_hub import get_token

    return get_token()


def push(folder: Path, repo: str, private: bool, round_no: int, api=None, token: str | None = None) -> str:
    """Create the repo if needed and upload the folder as one commit; returns the repo URL."""
    if not REPO_ID.fullmatch(repo):
        raise PublishError(f"{repo!r} is not a Hub repo id (user/name)")
    token = token or find_token()
    if not token:
        raise PublishError(f"no Hugging Face token: set HF_TOKEN or run `hf auth login`; the folder {folder} is "
                           f"ready, push it again with --repo {repo}")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        url = api.create_repo(repo, token=token, private=private, repo_type="model", exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model", token=token,
                          commit_message=f"selfevolve round {round_no}: adapter, model card, training data")
    except Exception as e:  # HTTP, auth, network: huggingface_hub raises several kinds; all end the same way
        raise PublishError(f"push to {repo} failed ({type(e).__name__}: {e}); the folder {folder} stays") from e
    return str(url)


def publish(cfg, run, round_no: int, *, out: Path | None = None, repo: str | None = None,
            private: bool | None = None, force: bool = False, api=None, log=print) -> PublishResult:
    """Check the round, write its folder, push it when a repo is named (``repo`` or ``publish.repo``)."""
    rnd = run.round(round_no)
    if not rnd.dir.is_dir():
        raise PublishError(f"round {round_no} does not exist in {run.dir}")
    ev = evidence(rnd)
    blocked, needs_force = refusal(rnd, ev)
    if blocked:
        raise PublishError(blocked)
    if needs_force and not force:
        raise PublishError(f"{needs_force}; --force publishes it anyway (the card says so)")
    if needs_force:
        log(f"publish: {needs_force}; publishing anyway (--force)")
    pc = cfg.publish
    repo = repo or pc.repo
    if repo and not REPO_ID.fullmatch(repo):
        raise PublishError(f"{repo!r} is not a Hub repo id (user/name)")
    folder = build_folder(cfg, run, rnd, Path(out) if out else run.publish_dir(rnd.number), repo=repo,
                          forced_by=needs_force, ev=ev)
    log(f"publish: wrote {folder}")
    result = PublishResult(folder, forced=bool(needs_force))
    if repo:
        result.url = push(folder, repo, pc.private if private is None else private, round_no, api=api)
        log(f"publish: pushed to {result.url}")
    return result
