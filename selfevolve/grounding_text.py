"""Reading terms out of text for the grounding check (selfevolve/grounding.py): numbers with their units, names,
code tokens, content words, negated phrases, reported errors and the code lines they point at; :func:`rewordings`.

Plain regular expressions and hand lists, no model: the check runs on every corrected turn of a round.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# A hand list rather than scikit-learn's ENGLISH_STOP_WORDS: that one holds content words ("fire", "bill",
# "system") and lacks the hedges and feedback words corrections are made of ("pretty sure", "actually").
STOP = frozenset("""a about above actually after again against all almost also although always am an and any
are aren as at be because been before being below between both but by can cannot could did didn do does doesn
doing don done down during each either else enough even ever every exactly few for from further get gets got
had has have having he her here hers him his how however i if in into is isn it its itself just last least less
let like ll made make many may maybe me might mine more most much must my myself never no nor not now of off
often on once one only or other others our ours out over own perhaps please pretty probably quite rather
really right same say says said see seems seem shall she should since so some something still such sure than
thank thanks that the their theirs them then there these they thing think thought this those though through
to too under until up upon us use used using very was wasn way we well were what when where whether which
while who whom whose why will with without would wrong yes yet you your yours correct correction meant mean
okay ok sorry true false i'm i've it's that's isn't don't doesn't didn't can't won't there's let's you're
believe guess heard told tell tried try check looks look usual usually fairly kind sort anyway instead
great perfect nice good clear cool works worked run add call include type love random different several next
makes done alternatively plus minus times around roughly approximately nearly basically""".split())
ERROR_GENERIC = frozenset("""error errors type object attribute line column columns invalid syntax expected function
functions defined value literal base appear clause allowed aggregate command found module uncaught console
crashes gives says running index range unexpected token position support item assignment constant variable
unmatched fatal directory omitting specified expressions target exist call called string get says when
postgres""".split())
_WORDNUM = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve "
                                        "thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_WORDNUM.update({w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)})
_WORDNUM.pop("one")  # "the one that", "one standard sachet": far more often a pronoun than a number
# Units a quantity is read with; other words after a number ("212 bones", "8601 format") are no unit.
UNITS = frozenset("""second minute hour day week month year decade century ms mm cm m km inch foot yard mile
g mg kg lb pound ounce oz ton tonne ml l liter litre cup tablespoon teaspoon gallon pint degree byte kb mb gb tb
kib mib gib bit hz khz mhz ghz w kw v volt amp calorie kcal euro dollar cent percent mph kph bpm""".split())
_SCALE = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_NUM_RE = re.compile(r"(?<![\w.\-/$])(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?![\d,]\d)|\b(%s)(?:[- ](%s))?\b"
                     % ("|".join(_WORDNUM), "|".join(w for w, v in _WORDNUM.items() if v < 10)), re.I)
_UNIT_RE = re.compile(r"\s?(?:(hundred|thousand|million|billion)\b\s?)?(%|°\s?[CFcf]?|[A-Za-z]+)?(?:\s?(?:per|/)\s?([A-Za-z]+))?")
_HEDGE_RE = re.compile(r"(?i)(about|around|roughly|approximately|nearly|almost|~|some)\s*$")
_ERROR_RE = re.compile(r"\b[A-Z]\w*(?:Error|Exception)\b|\bERROR\b|\bfatal:|\berror:|command not found|Traceback"
                       r"|No such file|Permission denied|Segmentation fault")
_CODE_RES = [re.compile(p) for p in (
    r"(?<![\w.])[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?:\([^()\n]{0,20}\))?",   # dotted: file.txt, arr.includes(3)
    r"\b[A-Za-z_]\w*\([^()\n]{0,20}\)",                                  # calls: sort(), COUNT(*)
    r"\b\w*_\w+\b", r"\b\w+(?:Error|Exception)\b",                       # snake_case, error names
    r"(?<![\w-])--?[a-zA-Z][\w-]*",                                      # flags: -l, --soft
    r"\b[A-Z][A-Z0-9_-]*[A-Z0-9]\b",                                     # ALLCAPS: SIGTERM, HAVING, YYYY-MM-DD
    r"\b(?=\w*\d)(?=\w*[A-Za-z])\w+\b",                                  # letters and digits: H2O, K2
    r"(?<!\w)\"([^\"\n]{1,30})\"", r"(?<!\w)'([^'\n]{1,30})'(?!\w)")]    # quoted strings
_NAME_RE = re.compile(r"[A-Z][a-zA-Z]*[a-z][a-zA-Z]*(?:\s+(?:of\s+|de\s+|da\s+)?[A-Z][a-zA-Z]*[a-z][a-zA-Z]*)*")


@dataclass
class Number:
    """A number as written ("5,280 feet", "seven", "about 3,500 km") and what it means."""

    value: float
    unit: str = ""
    """Normalised unit word or symbol after it ("foot", "%", "°f", "km/second"); "" when none."""
    text: str = ""
    approx: bool = False
    """Hedged by the writer ("about", "around"): matched within GroundingConfig.approx_tolerance."""
    need_unit: bool = False
    """Matched only together with its unit (the value alone also occurs where it must not count)."""


def _unit(word: str | None) -> str:
    if not word:
        return ""
    w = word.lower().replace(" ", "")
    if w.startswith("°") or w == "%":
        return w
    w = {"feet": "foot", "ft": "foot", "inches": "inch", "centuries": "century"}.get(w, w)
    w = w[:-1] if w.endswith("s") and w[:-1] in UNITS else w
    return w if w in UNITS else ""


def numbers(text: str) -> list[Number]:
    """Every number of ``text`` with its unit: 1,000 -> 1000, seven -> 7, fifty-six -> 56, 150 million km."""
    out = []
    for m in _NUM_RE.finditer(text):
        if m.group(1):
            value = float(m.group(1).replace(",", ""))
        else:
            value = _WORDNUM[m.group(2).lower()] + (_WORDNUM[m.group(3).lower()] if m.group(3) else 0)
        u = _UNIT_RE.match(text, m.end())
        if u.group(1):
            value *= _SCALE[u.group(1).lower()]
        unit = _unit(u.group(2))
        if unit and u.group(3) and _unit(u.group(3)):
            unit += "/" + _unit(u.group(3))
        end = u.end() if unit or u.group(1) else m.end()
        out.append(Number(value, unit, " ".join(text[m.start():end].split()),
                          approx=bool(_HEDGE_RE.search(text[max(0, m.start() - 16):m.start()]))))
    return out


def has_number(text: str, n: Number, need_unit: bool = False, tol: float = 0.0) -> bool:
    """Does ``text`` state ``n``? Units must be compatible (equal, or one of them missing); with ``need_unit``
    equal. A hedged ``n`` ("about 3,500 km") matches within ``tol`` (relative)."""
    slack = tol * abs(n.value) if n.approx else 0.0
    return any(abs(m.value - n.value) <= slack and (m.unit == n.unit or (not need_unit and not (m.unit and n.unit)))
               for m in numbers(text))


def _stem(word: str) -> str:
    w = word.lower().removesuffix("'s")
    for suf in ("ing", "ed", "es", "s", "ly"):
        if w.endswith(suf) and len(w) - len(suf) >= 4:
            w = w[:-len(suf)]
            break
    return w.removesuffix("e")


def _name_key(word: str) -> str:
    """Names and their adjectives meet: Rome ~ Roman, Japan ~ Japanese."""
    w = word.lower()
    for suf in ("ians", "ian", "ans", "an", "ese", "ish", "s", "e", "a"):
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            return w[:-len(suf)]
    return w


def names(text: str) -> list[str]:
    """Capitalised names, multi-word ones whole; a sentence-initial word only when it is no common word."""
    out = []
    for m in _NAME_RE.finditer(text):
        words = m.group(0).split()
        before = text[:m.start()].rstrip(" \"'(*")
        initial = not before or before[-1] in ".!?:;\n"
        after = text[m.end():m.end() + 1]
        first = words[0].lower()
        if initial and (first in STOP or first.endswith(("ing", "ly", "ed")) or re.search(rf"\b{first}\b", text)
                        or (len(words) == 1 and after != "" and after in ",.!:`")):  # "Perfect, thanks." "Run `git ...`"
            words = words[1:]
        if words:
            out.append(" ".join(words))
    return list(dict.fromkeys(out))


def has_name(text: str, name: str, any_word: bool = False) -> bool:
    """Every word of ``name`` occurs in ``text`` (case-insensitive, Rome ~ Roman); or any word with ``any_word``."""
    have = {_name_key(w) for w in re.findall(r"[A-Za-z]+", text)}
    keys = [_name_key(w) for w in name.split() if w.lower() not in STOP]
    return bool(keys) and (any if any_word else all)(k in have for k in keys)


def code_tokens(text: str, spans: bool = True) -> list[str]:
    """Code tokens: backticked spans (with ``spans``), dotted identifiers, calls, snake_case, error names,
    flags, ALLCAPS, letter-digit tokens and short quoted strings."""
    out = [s.strip() for s in re.findall(r"`([^`\n]+)`", text)] if spans else []
    prose = re.sub(r"```.*?```", " ", text, flags=re.S)
    for rx in _CODE_RES:
        for m in rx.finditer(prose):
            tok = (m.group(1) if rx.groups else m.group(0)).strip().rstrip(".")
            if len(tok) >= 2 and tok.lower() not in STOP and not tok.replace(".", "").isdigit():
                out.append(tok)
    return list(dict.fromkeys(out))


def has_code(text: str, tok: str) -> bool:
    """``tok`` occurs in ``text`` as a whole token; case-sensitive unless it is a plain word ("Affect")."""
    flags = re.I if tok[1:].islower() and tok.isalpha() else 0
    return re.search(rf"(?<!\w){re.escape(tok)}(?!\w)", text, flags) is not None


def _shape(tok: str) -> str:
    return ("flag" if tok.startswith("-") else "call" if tok.endswith(")") else "error" if tok.endswith(
        ("Error", "Exception")) else "dotted" if "." in tok else "caps" if tok.isupper() else "other")


def same_shape(tok: str, others: list[str]) -> bool:
    return _shape(tok) in {_shape(o) for o in others}


def content_words(text: str) -> list[str]:
    """Lower-case words of three letters or more that are no stopword (names and code are read apart)."""
    prose = re.sub(r"```.*?```|`[^`\n]*`", " ", text, flags=re.S)
    return list(dict.fromkeys(w for w in re.findall(r"(?<![\w'-])[a-z][a-z'-]*[a-z](?![\w'-])", prose)
                              if len(w) >= 3 and w not in STOP and "'" not in w))


def has_word(text: str, word: str) -> bool:
    return _stem(word) in {_stem(w) for w in re.findall(r"[A-Za-z][A-Za-z'-]*", text)}


def negated_phrases(correction: str) -> list[str]:
    """Phrases the correction negates: "not X", "rather than X", "instead of X", "X is wrong", and
    "X isn't ..." except the assertive question "Isn't it X?"."""
    out = []
    filler = r"(?:(?:the|a|an|by|my|your|in|on|at|to|for|of|with|as|just|that|it's|its)\s+)*"
    for m in re.finditer(rf"(?i)\b(?:not|never|rather than|instead of)\s+{filler}([^,.;:!?()\n]{{1,40}})", correction):
        out.append(" ".join(re.split(r"(?i)\s(?:but|and|which|so|because|that)\s", m.group(1))[0].split()[:4]))
    for m in re.finditer(r"(?i)([^\s,.;:!?]+(?:\s+[^\s,.;:!?]+){0,2})\s+(?:is|was|are|were)\s+"
                         r"(?:wrong|incorrect|false|a myth|not right|not correct)\b", correction):
        out.append(m.group(1))
    for m in re.finditer(r"(?i)\b([^\s,.;:!?]+)\s+(?:is|are|was|were)n't\b", correction):
        out.append(m.group(1))
    return [p for p in out if p.strip()]


def error_message(correction: str, original: str) -> str | None:
    """The error the correction reports (its line, cut at the sentence's end or a following "when I ..."),
    or None when it reports none. ``cmd: message`` counts when ``cmd`` starts a code line of the original."""
    m = _ERROR_RE.search(correction)
    if m is None:
        cmds = {ln.split()[0] for ln in sum(_code_lines(original), []) if ln.split()}
        m = next((c for c in re.finditer(r"(?<![\w-])([a-z][\w-]*): ", correction) if c.group(1) in cmds), None)
        if m is None:
            return None
    start = correction.rfind("\n", 0, m.start()) + 1
    line = correction[start:].split("\n")[0]
    return re.split(r"\.\s+(?=[A-Z])|\s(?:when|if) I\s", line)[0].strip()


def _code_lines(text: str) -> tuple[list[str], list[str]]:
    """(lines of fenced code blocks, inline backtick spans outside them), each of 3+ non-space characters."""
    lines = [ln.strip() for block in re.findall(r"```[^\n]*\n(.*?)```", text, re.S) for ln in block.split("\n")]
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", " ", text, flags=re.S))
    return [ln for ln in lines if len(ln.replace(" ", "")) >= 3], [x for x in spans if len(x.replace(" ", "")) >= 3]


def failing_lines(original: str, error: str) -> list[str]:
    """The original's code lines that name an identifier of the error message; all of them when none does."""
    toks = set()
    for t in re.findall(r"[A-Za-z_][\w.]*", error) + re.findall(r"['\"]([^'\"]+)['\"]", error):
        t = t.strip(".")
        for part in {t, *t.split(".")}:
            if len(part) >= 2 and part.lower() not in STOP and part.lower() not in ERROR_GENERIC \
                    and not part.endswith(("Error", "Exception")):
                toks.add(part)
    lines = sum(_code_lines(original), [])
    hit = [ln for ln in lines if any(re.search(rf"(?<!\w){re.escape(t)}(?!\w)", ln) for t in toks)]
    return hit or lines


def norm_code(text: str) -> str:
    return " ".join(text.replace(";", " ").split())


def repeats_line(answer: str, line: str) -> bool:
    """Does ``answer`` still hold the failing ``line``: as a whole line (whitespace-normalised), or anywhere in
    its prose and inline spans? Inside a fenced block only whole lines count: "import datetime" is not
    repeated by "from datetime import datetime"."""
    target = norm_code(line)
    if any(norm_code(ln) == target for ln in answer.split("\n")):
        return True
    return target in norm_code(re.sub(r"```.*?```", " ", answer, flags=re.S))


def has_any_code(text: str) -> bool:
    return re.search(r"```|`[^`\n]+`|\w\(|\w\[|\s=\s|==|\$\w", text) is not None


def short(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 1] + "…"


# ---------------------------------------------------------------- rewordings

_SWAPS = [(r"^what is\b", "what's"), (r"^what's\b", "what is"), (r"^how do i\b", "what's the way to"),
          (r"^how can i\b", "how do i"), (r"^can you\b", "could you"), (r"^could you\b", "can you"),
          (r"^which\b", "what"), (r"^how many\b", "what number of"), (r"^is there\b", "does there exist"),
          (r"^who was\b", "which person was"), (r"^who is\b", "which person is"), (r"^when did\b", "at what time did")]


def rewordings(question: str, n: int = 2) -> list[str]:
    """``n`` deterministic template rewordings of ``question`` (same input, same output).

    They change the surface only (a lead-in, an embedded or imperative form, a question-word swap); the
    content words are kept. So the "reworded" evaluation tests whether a lesson survives a different
    phrasing of the same question, not whether it transfers to a different question or a paraphrase a
    person would write."""
    q = " ".join(question.split()).strip()
    body = q.rstrip("?.! ")
    low = body[:1].lower() + body[1:]
    swapped = low
    for pat, rep in _SWAPS:
        swapped, k = re.subn(pat, rep, low, count=1, flags=re.I)
        if k:
            break
    # Embedded form of the question: "how do I undo it" -> "how to undo it", "what is X" -> "what X is".
    embedded = re.sub(r"(?i)^(how|what|where|when|which \w+) (?:do|can|should) i\b", r"\1 to", low)
    embedded = re.sub(r"(?i)^(what|who|where) (is|are|was|were) (.+)$", r"\1 \3 \2", embedded)
    is_question = q.endswith("?") or re.match(r"(?i)(what|how|which|who|when|where|why|is|are|do|does|can|could|should)\b", q)
    if is_question:
        forms = [f"Quick question: {q}", f"{swapped[:1].upper() + swapped[1:]}?", f"Do you know {embedded}?",
                 f"Tell me {embedded}.", f"I was wondering: {swapped}?", f"Please answer this: {low}?"]
    else:
        forms = [f"Quick request: {q}", f"Could you do this for me? {q}", f"Please {low}.",
                 f"I need help with this: {low}.", f"Here's a task: {q}", f"Help me out: {low}."]
    out = [f for f in dict.fromkeys(forms) if f.rstrip("?.!").lower() != body.lower()]
    return out[:n]
