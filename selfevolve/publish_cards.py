"""The two cards ``selfevolve publish`` writes (selfevolve/publish.py): the model card (README.md beside
``adapter/``) and the dataset card (``dataset/README.md``). Everything here reads what the round's stages
recorded (manifest, compare's summary, train_meta.json); nothing is measured again."""
from __future__ import annotations

import json
from pathlib import Path

from .compare_report import asked_judge, drift_rows, probe_markdown


def base_model_id(model_path: str) -> str:
    """The card's ``base_model``: a local model folder's name (``SmolLM2-135M-Instruct``), or the hub id itself."""
    path = Path(model_path)
    return path.name if path.is_dir() else model_path


def _pct(x) -> str:
    return "–" if x is None else f"{x:.1%}"


def _front_matter(data) -> list[str]:
    return ["---", data.to_yaml().rstrip(), "---", ""]


def _base_note(model_path: str) -> list[str]:
    """Where a local base model came from, when model_prep converted it (its weights are the GGUF's, dequantized,
    not the hub release's)."""
    prepared = Path(model_path) / "selfevolve-prepared.json"
    if not prepared.is_file():
        return []
    gguf = json.loads(prepared.read_text()).get("gguf", "a GGUF file")
    return [f"The base model was converted from `{gguf}` to HF safetensors (`selfevolve prepare-model`): load the "
            "adapter on that conversion for the figures below.", ""]


def _usage(base: str, repo: str) -> list[str]:
    where = repo or "<this folder>"
    return ["## Use", "", "```python", "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            f'base = AutoModelForCausalLM.from_pretrained("{base}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{base}")',
            f'model = PeftModel.from_pretrained(base, "{where}", subfolder="adapter")', "```", ""]


def _pairwise(s: dict) -> list[str]:
    if not asked_judge(s):
        return ["Pairwise judge: not asked (the embedded model's judge flips with the order); the probes and the "
                "drift monitors are the evidence.", ""]
    r = s["result"]
    return [f"Pairwise judge ({s['judge']}), {r['n']} held-out prompts, both orders: {s['b']['label']} wins "
            f"{r['wins']}, ties {r['ties']}, loses {r['losses']}; win rate {_pct(r['win_rate'])} "
            f"({r['confidence']:.0%} CI {_pct(r['ci_low'])}–{_pct(r['ci_high'])}): {r['verdict']}.", ""]


def _gate(decision: dict | None, forced_by: str | None) -> list[str]:
    if decision is None:
        return ["### Gate", "", "The gate never decided on this round.", ""]
    head = "**Promoted**" if decision.get("promote") else "**Not promoted**"
    lines = ["### Gate", "", f"{head}: {decision.get('reason', '')}", ""]
    lines += [f"- {'✓' if c['ok'] else '✗'} {c['name']}: {c['text']}" for c in decision.get("checks", [])]
    if forced_by:
        lines += ["", "Published with `--force` although the gate did not promote it."]
    return lines + [""]


def _evaluation(ev, forced_by: str | None) -> list[str]:
    lines = ["## Evaluation", ""]
    s = ev.summary
    if s is None:
        return lines + ["No comparison was recorded for this round.", "", *_gate(ev.decision, forced_by)]
    a, b = s["a"]["label"], s["b"]["label"]
    lines += [f"Round {ev.round}'s comparison: **{b}** (this adapter, the candidate) against **{a}** (live when it "
              f"was trained). Probes are questions from users' own conversations asked fresh, scored by the users' "
              f"words: they measure whether corrections were learnt and confirmed answers kept, not general quality.",
              "", "### Probes", "", *probe_markdown(s.get("probes")), "", "### Pairwise judge and drift", "",
              *_pairwise(s), f"| drift monitor | {a} | {b} |", "|---|---|---|"]
    lines += [f"| {name} | {va} | {vb} |" for (name, va), (_, vb) in zip(drift_rows(s["drift"]["a"]),
                                                                          drift_rows(s["drift"]["b"]))]
    return lines + ["", *_gate(ev.decision, forced_by)]


def _training(meta: dict) -> list[str]:
    if not meta:
        return ["## Training", "", "No train_meta.json was found for this round.", ""]
    ex = meta.get("examples", {})
    lines = ["## Training", "",
             f"LoRA on `{base_model_id(meta.get('base_model', ''))}` with TRL + PEFT on {ex.get('train_sft', 0)} SFT "
             f"examples" + (f" and {ex['train_dpo']} preference pairs" if "train_dpo" in ex else "") +
             f" (`dataset/`), {meta.get('device', '?')} {meta.get('dtype', '')}, {meta.get('seconds', '?')} s.", ""]
    for phase, m in (meta.get("metrics") or {}).items():
        first, final = m.get("first_loss"), m.get("final_loss")
        loss = f"loss {first:.4f} → {final:.4f}" if first is not None and final is not None else "loss –"
        lines.append(f"- {phase}: {m.get('steps')} steps, {loss} (mean {m.get('train_loss', float('nan')):.4f}), "
                     f"{m.get('tokens', 0):,} tokens, {m.get('tokens_per_s', 0):,.0f} tokens/s")
    lines += ["", "Training data sha256: " + ", ".join(f"{k} `{v[:12]}`" for k, v in (meta.get("data_sha256") or {})
                                                       .items()), "",
              "Config (`train_meta.json`):", "", "```json", json.dumps(meta.get("config", {}), indent=2), "```", ""]
    return lines


def model_card(cfg, pc, ev, counts: dict, *, repo: str = "", forced_by: str | None = None) -> str:
    """README.md of the publish folder: front matter, use, evaluation, training, data."""
    from huggingface_hub import ModelCardData

    base = base_model_id(cfg.model.path)
    tags = ["peft", "lora", "selfevolve", "trl", "sft"] + (["dpo"] if "dpo" in ev.train_meta.get("metrics", {}) else [])
    front = ModelCardData(base_model=base, library_name="peft", license=pc.license, tags=tags,
                          pipeline_tag="text-generation")
    lines = [*_front_matter(front), f"# {repo or f'selfevolve round {ev.round}'}", "",
             f"A LoRA adapter for `{base}`, round {ev.round} of selfevolve: a served chat model "
             "that trains on its own conversations, with the user as the judge. Answers users corrected were "
             "rewritten with what they said afterwards (SFT, and revision ≻ original for DPO); answers they "
             "confirmed train as they were.", ""]
    if forced_by:
        lines += [f"> **Published without promotion** (`--force`): {forced_by}.", ""]
    lines += [*_usage(base, repo), *_base_note(cfg.model.path), *_evaluation(ev, forced_by), *_training(ev.train_meta),
              "## Data", "", f"`dataset/`: {counts['sft']} SFT examples, {counts['dpo']} preference pairs; its "
              "README.md says where they come from and how they were curated.", ""]
    return "\n".join(lines)


def _count_table(title: str, counts: dict) -> list[str]:
    return [f"| {title} | SFT examples |", "|---|---|", *[f"| {k} | {v} |" for k, v in counts.items()], ""]


def dataset_card(cfg, pc, ev, counts: dict) -> str:
    """dataset/README.md: what the files hold, counts by signal label and by what trains, curation, consent."""
    from huggingface_hub import DatasetCardData

    configs = [{"config_name": "sft", "data_files": "train_sft.jsonl"}]
    if counts["dpo"]:
        configs.append({"config_name": "dpo", "data_files": "train_dpo.jsonl"})
    front = DatasetCardData(license=pc.license, task_categories=["text-generation"], language=["en"],
                            tags=["selfevolve", "conversational", "sft", "dpo"], configs=configs)
    cur = ev.curate.get("counts") or {}
    order = ev.curate.get("order") or []
    dropped = cur.get("dropped_per_filter") or {}
    lines = [*_front_matter(front), f"# Training data of selfevolve round {ev.round}", "",
             f"- `train_sft.jsonl`: {counts['sft']} records `{{id, round, prompt, completion}}` (TRL's conversational "
             "prompt/completion shape);",
             f"- `train_dpo.jsonl`: {counts['dpo']} records `{{id, round, prompt, chosen, rejected}}` (chosen = the "
             "revision, rejected = the original answer).", "",
             f"Every round up to {ev.round}, deduplicated by turn id and content; `id` is "
             "`<conversation id>#<message index>`.", "", "## Counts", "",
             *_count_table("hindsight signal of the turn", counts["label"]),
             *_count_table("trains on", counts["trains_on"]), *_count_table("curated in round", counts["rounds"]),
             "## How it was curated", "",
             "1. **signals**: each assistant turn is labelled confirmed / corrected / unclear from what the user said "
             "next (and thumbs up / down), by a small classifier over sentence embeddings.",
             "2. **revise**: each turn is rewritten by the served model with that hindsight.",
             "3. **curate**: corrected turns whose revision carries the user's correction train on the revision (SFT "
             "and a DPO pair); confirmed turns train on the original answer (SFT only); unclear turns do not train.",
             f"   Filters, in order: {', '.join(order) or '–'}. Round {ev.round} read {cur.get('read', '–')} turns, "
             f"kept {cur.get('kept', '–')}" + (" (dropped: " + ", ".join(f"{k} {v}" for k, v in dropped.items())
                                                + ")" if dropped else "") + ".", "",
             "## Personal data", "",
             "Chat content from users who consented; see the privacy section of the selfevolve README. Gateway "
             "chats are collected only when the user's consent flag was set; chat files imported with "
             "`data.inputs` are the operator's to vouch for. Messages are published as they were collected: "
             "review them before making a repository public.", ""]
    return "\n".join(lines)
