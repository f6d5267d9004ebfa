"""PII scrubbing before conversations leave the store for training (Presidio analyzer + anonymizer).

Every entity found is replaced by a typed placeholder (``<EMAIL>``, ``<PHONE>``, ``<CARD>``, ``<IBAN>``, ``<IP>``,
``<URL_CREDENTIALS>``, ``<SECRET>``; ``<PERSON>`` only with an NER model). The collect stage scrubs every
conversation it takes, whatever its source (gateway captures and imported chat logs alike), so nothing
downstream (signals, revise, curate, the training files, publish) ever sees the original text.

Recognizers (all offline; nothing is downloaded, ever):
- Presidio's own: email (its domain checked against tldextract's *bundled* public-suffix snapshot, never
  fetched), phone (python-phonenumbers, ``phone_regions`` for national formats, any ``+CC`` number),
  credit card (Luhn-checked; extra patterns for the Mastercard 2-series and 19-digit cards Presidio's
  regex misses), IBAN (mod-97 checked), IPv4/IPv6 (checked by ``ipaddress``; loopback and unspecified kept);
- ours: credentials in URLs (``scheme://user:password@host``: all but the scheme and path) and secrets
  (well-known API-key / token formats, bearer tokens, JWTs, private-key blocks, ``password = "..."``).

The NLP engine is Presidio's no-op engine: the pattern recognizers need no tokens, and a blank spaCy pipeline
gives none of the lemmas Presidio's context words need, at a cost. Names need an NER model: ``ner_model``
names an installed spaCy package or a folder (off by default: none ships with selfevolve).
Measured recall / precision and speed: scripts/bench_pii.py, docs/bench/pii.md.
"""
from __future__ import annotations

import contextlib
import ipaddress
import re
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, check_ranges

ENTITIES = ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "URL_CREDENTIALS", "SECRET")
"""Entity types scrubbed by default; each becomes ``<TYPE>`` in the text."""
NER_ENTITIES = ("PERSON",)
"""Types that need ``ner_model``."""

# Card numbers starting 2221-2720 (Mastercard since 2017): Presidio's card regex only knows 1/3/4/5/6.
MASTERCARD_2 = r"\b2[2-7]\d{2}[- ]?\d{4}[- ]?\d{4}[- ]?\d{4}\b"
# 19-digit cards (Visa, UnionPay, Maestro, Discover; 4-4-4-4-3): Presidio's regex stops at 17 digits.
CARD_19 = r"\b[2-6]\d{3}[- ]?\d{4}[- ]?\d{4}[- ]?\d{4}[- ]?\d{3}\b"
# ``user:password@host`` of a URL (the host too: ``password@host`` would otherwise read as an email); the
# scheme and path stay readable for training.
URL_USERINFO = r"(?<=\b[a-z][a-z0-9+.\-]{1,15}://)[^\s/?#@:]+:[^\s/?#@]+@[^\s/?#]+"
# A bare digit run read as a phone number right after one of these is an identifier, not a phone.
NOT_PHONE_BEFORE = re.compile(r"(?i)(?:#|=\s*|\b(?:order|invoice|ticket|tracking|ref|reference|confirmation|"
                              r"serial|sku|issue|build|id|timestamp|epoch|seed|port|pid)"
                              r"\s*(?:number|no\.?|id|#)?\s*[:#]?\s*)$")
# A key named like a secret (``DB_PASSWORD`` too: ``_`` is no word boundary, hence the lookbehind).
SECRET_NAME = (r"(?<![A-Za-z0-9])(?:api[_\-]?key|apikey|secret(?:[_\-]?key)?|client[_\-]?secret|access[_\-]?token|"
               r"auth[_\-]?token|password|passwd|pwd{})")
SECRET_PATTERNS = {
    # Vendor formats with a fixed prefix: no false positive has been seen on code or prose.
    "openai/anthropic key": r"\bsk-(?:proj-|ant-(?:api\d\d-)?)?[A-Za-z0-9_\-]{20,}",
    "github token": r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})",
    "aws access key id": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "slack token": r"\bxox[abposr]-[A-Za-z0-9\-]{10,}",
    "google api key": r"\bAIza[0-9A-Za-z_\-]{35}",
    "hugging face token": r"\bhf_[A-Za-z0-9]{30,}",
    "gitlab token": r"\bglpat-[A-Za-z0-9_\-]{20,}",
    "stripe key": r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}",
    "jwt": r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
    "private key block": r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]+?-----END [A-Z ]*PRIVATE KEY-----",
    "bearer token": r"(?<=\bbearer\s+)[A-Za-z0-9\-._~+/]{16,}=*",
    # ``password = "..."`` / ``api_key: '...'``: a quoted literal after a secret-named key (code, config);
    # ``my password is Tr0ub4dor`` / ``DB_PASSWORD=abc123...``: unquoted only when it mixes letters and digits,
    # so ``token = tokenizer(text)`` or ``password = user_password`` stay code.
    "quoted secret assignment": rf"(?<={SECRET_NAME.format('|token')}[\"']?\s*[:=]\s*[\"'])[^\s\"']{{4,}}(?=[\"'])",
    "secret assignment": (rf"(?<={SECRET_NAME.format('')}(?:\s*[:=]\s*|\s+is\s+))"
                          r"(?=[^\s\"'(\[]*\d)(?=[^\s\"'(\[]*[A-Za-z])[^\s\"'(\[,;]{6,}(?![(\[])"),
}


@dataclass
class PiiConfig:
    enabled: bool = True
    """Scrub PII from every conversation collect takes (gateway captures and imported files) before anything
    is written to the round folder. ``--set pii.enabled=false`` keeps the text as it was."""
    entities: list[str] = field(default_factory=lambda: list(ENTITIES))
    """Types to scrub: EMAIL, PHONE, CARD (Luhn-checked), IBAN (mod-97 checked), IP (v4/v6), URL_CREDENTIALS
    (``user:password@`` in URLs), SECRET (API keys, tokens, passwords); PERSON needs ``ner_model``."""
    score_threshold: float = 0.3
    """Presidio score below which a match is kept as text. The scores are fixed by recognizer (there is no
    context boost without a lemmatizer): phone 0.4, IP 0.6, ours 0.8, checksum-validated email / card / IBAN
    1.0, so 0.3 keeps every recognizer and only drops IPv6 ``::`` (0.1)."""
    phone_regions: list[str] = field(default_factory=lambda: ["US", "GB", "DE", "FR", "IN", "AU"])
    """Regions whose national formats (no ``+CC``) count as phone numbers; international numbers are found
    whatever this says. Each region is one more pass of python-phonenumbers over the text."""
    ner_model: str = ""
    """An installed spaCy package or a model folder with an NER component: adds PERSON (names). Empty (default):
    no names — no NER model ships with selfevolve and none is ever downloaded."""

    def validate(self, key: str) -> None:
        known = ENTITIES + NER_ENTITIES
        for e in self.entities:
            if e not in known:
                raise ConfigError(f"{key}.entities: unknown type {e!r} (known: {', '.join(known)})")
        if "PERSON" in self.entities and not self.ner_model:
            raise ConfigError(f"{key}.entities: PERSON needs {key}.ner_model (an installed spaCy model with NER)")
        check_ranges(self, key, open_unit=("score_threshold",))
        if not self.phone_regions and "PHONE" in self.entities:
            raise ConfigError(f"{key}.phone_regions: PHONE needs at least one region (e.g. US)")
        import phonenumbers  # light (no Presidio): the region codes it knows
        for r in self.phone_regions:
            if r not in phonenumbers.SUPPORTED_REGIONS:
                raise ConfigError(f"{key}.phone_regions: unknown region {r!r} (ISO 3166 codes such as US, GB, DE)")


def _phone_like(text: str, start: int, end: int) -> bool:
    """What python-phonenumbers calls a valid number but no one writes as a phone: fewer than 7 digits
    (``16.9.0``, ``137971``), more than 15 (E.164's limit: a 16-digit card-like string), a decimal
    (``16.92627``), or a bare digit run named as an order / ticket / timestamp ... (without a lemmatizer
    Presidio's own context words cannot tell them apart)."""
    span = text[start:end]
    digits = sum(c.isdigit() for c in span)
    if not 7 <= digits <= 15 or re.fullmatch(r"[1-9]\d*\.\d+", span):
        return False
    return not (span.isdigit() and NOT_PHONE_BEFORE.search(text, 0, start))


def _offline_tld():
    import tldextract
    # suffix_list_urls=() and no cache: the snapshot bundled in the wheel, never an HTTP request.
    return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


def _recognizers(cfg: PiiConfig) -> list:
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer, IbanRecognizer,
                                                          IpRecognizer, PhoneRecognizer)
    tld = _offline_tld()

    class OfflineEmailRecognizer(EmailRecognizer):
        """Presidio's email recognizer, its domain check on the bundled suffix list (the stock one may fetch)."""

        def validate_result(self, pattern_text: str) -> bool:
            return tld(pattern_text.rsplit("@", 1)[-1]).fqdn != ""

    class IdAwarePhoneRecognizer(PhoneRecognizer):
        """Presidio's phone recognizer, minus what :func:`_phone_like` rules out."""

        def analyze(self, text, entities, nlp_artifacts=None):
            return [r for r in super().analyze(text, entities, nlp_artifacts) if _phone_like(text, r.start, r.end)]

    class AddressIpRecognizer(IpRecognizer):
        """Presidio's IP recognizer, minus what names no machine: loopback and unspecified addresses
        (``127.0.0.1``, ``::1``, ``0.0.0.0``) and digit-free "IPv6" such as ``a::b`` or ``dead::beef`` (code)."""

        def invalidate_result(self, pattern_text: str) -> bool:
            if super().invalidate_result(pattern_text) or not any(c.isdigit() for c in pattern_text):
                return True
            ip = ipaddress.ip_interface(pattern_text).ip
            return ip.is_loopback or ip.is_unspecified

    card_patterns = CreditCardRecognizer.PATTERNS + [Pattern("Mastercard 2-series", MASTERCARD_2, 0.3),
                                                  Pattern("19 digits", CARD_19, 0.3)]
    make = {
        "EMAIL": lambda: OfflineEmailRecognizer(supported_entity="EMAIL"),
        "PHONE": lambda: IdAwarePhoneRecognizer(supported_entity="PHONE", supported_regions=tuple(cfg.phone_regions)),
        "CARD": lambda: CreditCardRecognizer(supported_entity="CARD", patterns=card_patterns),
        "IBAN": lambda: IbanRecognizer(supported_entity="IBAN"),
        "IP": lambda: AddressIpRecognizer(supported_entity="IP"),
        "URL_CREDENTIALS": lambda: PatternRecognizer(
            supported_entity="URL_CREDENTIALS", name="UrlCredentialsRecognizer",
            patterns=[Pattern("url userinfo", URL_USERINFO, 0.8)]),
        "SECRET": lambda: PatternRecognizer(
            supported_entity="SECRET", name="SecretRecognizer",
            patterns=[Pattern(n, rx, 0.8) for n, rx in SECRET_PATTERNS.items()]),
    }
    out = [make[e]() for e in cfg.entities if e in make]
    if "PERSON" in cfg.entities:
        from presidio_analyzer.predefined_recognizers import SpacyRecognizer
        out.append(SpacyRecognizer(supported_entities=["PERSON"]))
    return out


def _nlp_engine(cfg: PiiConfig):
    if not cfg.ner_model:
        from presidio_analyzer.nlp_engine import NoOpNlpEngine
        engine = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    else:
        import spacy.util
        from presidio_analyzer.nlp_engine import SpacyNlpEngine
        # Presidio downloads a spaCy model it cannot find: refuse instead, we never download.
        if not (spacy.util.is_package(cfg.ner_model) or Path(cfg.ner_model).is_dir()):
            raise ConfigError(f"pii.ner_model: {cfg.ner_model!r} is neither an installed spaCy package nor a "
                              "folder (selfevolve never downloads a model)")
        engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": cfg.ner_model}])
    engine.load()
    return engine


class Scrubber:
    """Built once per process and config (:func:`scrubber`): building it imports Presidio (with spaCy, seconds);
    scrubbing is then pure CPU (collect calls it from one thread)."""

    def __init__(self, cfg: PiiConfig | None = None):
        cfg = cfg or PiiConfig()
        try:
            with _without_transformers(cfg):
                self._build(cfg)
        except ImportError:  # a Presidio version that needs transformers after all: import it
            self._build(cfg)

    def _build(self, cfg: PiiConfig) -> None:
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_anonymizer import AnonymizerEngine
        from presidio_anonymizer.entities import OperatorConfig
        self.cfg = cfg
        registry = RecognizerRegistry(recognizers=_recognizers(cfg), supported_languages=["en"])
        self.analyzer = AnalyzerEngine(registry=registry, nlp_engine=_nlp_engine(cfg), supported_languages=["en"],
                                       default_score_threshold=cfg.score_threshold)
        self.anonymizer = AnonymizerEngine()
        self.entities = list(cfg.entities)
        self.operators = {e: OperatorConfig("replace", {"new_value": f"<{e}>"}) for e in self.entities}

    def analyze(self, text: str) -> list:
        """Presidio's results for ``text`` (overlaps not yet resolved)."""
        return self.analyzer.analyze(text=text, language="en", entities=self.entities,
                                     score_threshold=self.cfg.score_threshold)

    def scrub_text(self, text: str) -> tuple[str, Counter]:
        """``text`` with each entity replaced by ``<TYPE>``, and how many of each type were replaced."""
        if not text:
            return text, Counter()
        results = self.analyze(text)
        if not results:
            return text, Counter()
        out = self.anonymizer.anonymize(text=text, analyzer_results=results, operators=self.operators)
        return out.text, Counter(item.entity_type for item in out.items)

    def scrub_value(self, value: Any) -> tuple[Any, Counter]:
        """Every string inside a JSON-like value (dict values, list items) scrubbed; keys and numbers kept."""
        if isinstance(value, str):
            return self.scrub_text(value)
        counts: Counter = Counter()
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                out[k], c = self.scrub_value(v)
                counts.update(c)
            return out, counts
        if isinstance(value, list):
            items = []
            for v in value:
                s, c = self.scrub_value(v)
                items.append(s)
                counts.update(c)
            return items, counts
        return value, counts

    def scrub_conversation(self, record: dict) -> tuple[dict, Counter]:
        """A new record: message contents and every string in ``meta`` (feedback comments) scrubbed; ``id`` and
        ``source`` kept (the held-out split and the rounds' bookkeeping key on them)."""
        out = dict(record)
        counts: Counter = Counter()
        messages = []
        for m in record.get("messages", []):
            m = dict(m)
            m["content"], c = self.scrub_value(m.get("content"))
            counts.update(c)
            messages.append(m)
        out["messages"] = messages
        if "meta" in record:
            out["meta"], c = self.scrub_value(record["meta"])
            counts.update(c)
        return out, counts


@contextlib.contextmanager
def _without_transformers(cfg: PiiConfig):
    """Presidio's ``nlp_engine`` package imports ``transformers`` (about 3 of the 5 s its import takes here) for
    an NLP engine nothing here uses (with a ``ner_model``, which may be a transformer pipeline, nothing is hidden).
    Hidden only while Presidio is first imported: in collect, before a round starts a thread."""
    hide = not cfg.ner_model and "transformers" not in sys.modules and "presidio_analyzer" not in sys.modules
    if hide:
        sys.modules["transformers"] = None  # type: ignore[assignment]  # import raises ImportError
    try:
        yield
    finally:
        if hide and sys.modules.get("transformers", 0) is None:
            del sys.modules["transformers"]


_CACHE: dict[tuple, Scrubber] = {}
_LOCK = threading.Lock()


def scrubber(cfg: PiiConfig | None = None) -> Scrubber:
    """The process's one :class:`Scrubber` for this config."""
    cfg = cfg or PiiConfig()
    key = (tuple(cfg.entities), cfg.score_threshold, tuple(cfg.phone_regions), cfg.ner_model)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = Scrubber(cfg)
        return _CACHE[key]


def scrub_conversation(record: dict, cfg: PiiConfig | None = None) -> tuple[dict, Counter]:
    """``record`` scrubbed by the process's scrubber for ``cfg`` (default config), and the counts per type."""
    return scrubber(cfg).scrub_conversation(record)
