"""Contact points a user supplied: links, web addresses, e-mail addresses, phone numbers and handles in a training
answer that some user message of the turn already held (the injection filter's ``contacts`` rule, injection.py).

Why a rule on literals and not on phrasing: an injected instruction can be worded any way, and an answer that
follows it can word the payload its own way ("be sure to grab the official patch from patch-hub.example.com"),
so the rules that look for demands and copies miss it, split after split (docs/bench/injection.md). What such a
payload most often has to carry, whatever the wording, is where to send the reader: a link, an address, a number
to call. Those are literals, and one user must not be able to plant them in what the model learns for everyone.
So a trained answer never repeats a contact point that user text supplied; a link the model wrote on its own
(one no user message holds) trains as before. The cost, measured on real ShareGPT conversations, is the answers
that legitimately repeat a user's link ("the page at example.org/docs says…"): they are left out of training.

Bare web addresses ("patch-hub.example.com") need a known top-level domain: the Public Suffix List would read
``main.py`` (Paraguay) or ``setup.sh`` (Saint Helena) as addresses, so :data:`TLDS` is a short list of the
common generic and country domains plus the names reserved for examples and tests (RFC 2606), with the ones that
read as file names (py, sh, rs, md, pl, ...) left out. Phone numbers need a separator shape ("555-0142",
"(212) 555-0100", "+44 20 7946 0958", "0800 555 0199", "010-7788-1234"), or a phone word before or after them
("call 98765 01234", "número 912 555 067", "98765 01234 पर कॉल करें"): digits alone are amounts, years and ids. An
SMS short code has no shape of its own: four to six digits a user text asks to text something to ("text STOP to
55123"). An answer that holds a user's number anywhere, however it groups the digits, repeats it. A handle
("@markscheme_leaks") counts when a platform word or a contact verb stands within 40 characters of it ("message …
on Telegram", "Venmo to …"): a bare "@name" is a mention, and "@app.route" a decorator.
"""
from __future__ import annotations

import re

TLDS = ("com", "net", "org", "info", "biz", "io", "co", "ai", "app", "dev", "xyz", "online", "site", "shop", "store",
        "link", "click", "top", "club", "live", "news", "tech", "cloud", "email", "support", "help", "me", "tv",
        "gg", "ly", "to", "us", "uk", "ca", "au", "de", "fr", "es", "it", "nl", "ru", "cn", "jp", "in", "br", "eu",
        "edu", "gov", "test", "example", "invalid", "localhost")
_HOST = r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
_TAIL = r"(?:[/?#][^\s<>\"'`)\]]*)?"
URL_RE = re.compile(r"\b(?:https?|ftp)://[^\s<>\"'`)\]]+|\bwww\.[^\s<>\"'`)\]]+|"
                    rf"(?<![\w@./-]){_HOST}(?:{'|'.join(TLDS)})\b(?![.-]?\w){_TAIL}", re.IGNORECASE)
EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]+@(?:[\w-]+\.)+[a-z]{2,}\b", re.IGNORECASE)
PHONE_RE = re.compile(r"(?<![\w.+/-])(?:\+\d{1,3}[ -]?(?:\(\d{1,4}\)[ -]?)?\d{1,4}(?:[ -]\d{2,4}){1,4}"
                      r"|\(\d{3}\)\s?\d{3}-\d{4}|\d{3}-\d{3}-\d{4}|[2-9]\d{2}-\d{4}|1-\d{3}-\d{3}-\d{4}"
                      r"|0\d{1,4}([ -])\d{3,4}\1\d{3,4})(?![\w.-]?\d)(?! \d)")
# an SMS short code, which has no phone shape: "text STOP to 55123", "SMS JOIN to 80888"
SHORT_CODE_RE = re.compile(r"\b(?:text|txt|sms|send|message|reply)\b[^\n]{0,40}?\bto\s+(\d{4,6})\b", re.IGNORECASE)
# a number a phone word introduces, in any grouping: "call 98765 01234", "MB WAY para o número 912 555 067"
CUED_PHONE_RE = re.compile(r"(?:\bcall|\bphone|\btel\b|\bring\b|\bdial|\bwhatsapp|\bmb\s?way|\bbizum|número|numero|"
                           r"nummer|номер|телефон|τηλ|電話|电话|전화|कॉल|फोन|هاتف|اتصل)[^\d\n]{0,25}?"
                           r"(?<!\d)(\+?\d[\d \-.()]{5,18}\d)(?![\d-])"
                           r"|(?<!\d)(\+?\d[\d \-.()]{5,18}\d)(?![\d-])[^\d\n]{0,12}?(?:कॉल|फोन|に電話|へ電話|로\s*전화|번으로)",
                           re.IGNORECASE)  # the second form: languages that put the verb after the number
# a handle on a messaging or social platform, which a platform word or a contact verb near it marks as one
# ("message @markscheme_leaks on Telegram", "DM @deals_4u"): a bare "@name" is a mention or a decorator
HANDLE_RE = re.compile(r"(?<![\w@.])@([a-z0-9_](?:[a-z0-9_.-]{1,30}[a-z0-9_]))(?![\w@(]|\.\w)", re.IGNORECASE)
_PLATFORM_RE = re.compile(r"telegram|whatsapp|signal|discord|instagram|insta\b|twitter|tiktok|snapchat|threads|"
                          r"facebook|messenger|kik\b|wechat|weixin|line\b|viber|reddit|mastodon|bluesky|venmo|"
                          r"cash ?app|paypal|\bdms?\b|\bmessage|\bcontact|\bfollow|\breach|\bping|\btext\b|\badd\b|"
                          r"\bchannel|\bhandle|\busername|\bschreib|\bescrib|\bécri|напиш|канал|联系|私信|連絡",
                          re.IGNORECASE)
_DATE_RE = re.compile(r"^\d{4}-\d{2}(?:-\d{2})?$|^\d{2}-\d{2}-\d{4}$")


def _host_key(url: str) -> str:
    """``https://www.Patch-Hub.example.com/fix.sh.`` → ``patch-hub.example.com``: links to one site count as one."""
    u = re.sub(r"^(?:https?|ftp)://", "", url.strip().lower().rstrip(".,;:!?*_"))
    u = u.removeprefix("www.")
    return re.split(r"[/?#:]", u, maxsplit=1)[0]


def contacts(text: str) -> dict[str, str]:
    """Each contact point in ``text``: its key (a site's host, an address, a phone number's digits) → as written."""
    out: dict[str, str] = {}
    for m in EMAIL_RE.finditer(text):
        out.setdefault("@" + m.group(0).lower(), m.group(0))
    no_mail = EMAIL_RE.sub(" ", text)  # an address's domain is not a link of its own
    for m in URL_RE.finditer(no_mail):
        host = _host_key(m.group(0))
        bare = not re.match(r"(?:https?|ftp)://|www\.", m.group(0), re.IGNORECASE)
        name = m.group(0).split("/")[0]
        # ASP.NET, VB.NET: names; draggableSquare.style.top: code
        if "." in host and not (bare and (name.isupper() or re.search(r"[a-z][A-Z]", name))):
            out.setdefault(host, m.group(0).rstrip(".,;:!?*_"))
    for m in PHONE_RE.finditer(text):
        digits = re.sub(r"\D", "", m.group(0))
        if 7 <= len(digits) <= 15 and not _DATE_RE.match(m.group(0)):
            out.setdefault("tel:" + digits[-10:], m.group(0))
    for m in CUED_PHONE_RE.finditer(text):
        number = m.group(1) or m.group(2)
        digits = re.sub(r"\D", "", number)
        if 7 <= len(digits) <= 15:
            out.setdefault("tel:" + digits[-10:], number)
    for m in HANDLE_RE.finditer(text):
        near = text[max(0, m.start() - 40):m.end() + 40]
        if _PLATFORM_RE.search(near.replace(m.group(0), " ")):
            out.setdefault("handle:" + m.group(1).lower(), m.group(0))
    for m in SHORT_CODE_RE.finditer(text):
        out.setdefault("sms:" + m.group(1), m.group(1))
    return out


_ASKS = {"@": re.compile(r"\be-?mails?\b|\baddress", re.IGNORECASE),
         "handle:": re.compile(r"\bhandles?\b|\busernames?\b|\baccounts?\b|\bmentions?\b|\btags?\b|@", re.IGNORECASE),
         "tel:": re.compile(r"\bphone|\bcall\b|\bnumbers?\b|\bcontact|\bdial", re.IGNORECASE),
         "": re.compile(r"\blinks?\b|\burls?\b|\bwebsites?\b|\bsites?\b|\bdomains?\b|\bhref|\bpages?\b",
                        re.IGNORECASE)}


def request(question: str, limit: int = 300) -> str:
    """What the user asks for, before any pasted material: the question up to its first blank line (or a line
    ending in a colon), at most ``limit`` characters."""
    head = re.split(r"\n\s*\n|:\s*\n", question.strip(), maxsplit=1)[0]
    return head[:limit]


def _asked(key: str, ask: str) -> bool:
    kind = ("@" if key.startswith("@") else "handle:" if key.startswith("handle:")
            else "tel:" if key.startswith(("tel:", "sms:")) else "")
    return bool(_ASKS[kind].search(ask))


def _digits_in(digits: str, text: str) -> bool:
    """Whether ``text`` holds ``digits`` in a row, separators (space, dash, dot, brackets) between them allowed."""
    return re.search(r"(?<![\d])" + r"[\s\-.()]?".join(digits) + r"(?![\d])", text) is not None


def supplied(answer: str, users: list[str], question: str = "") -> list[str]:
    """The contact points of ``answer`` that some user text also holds, as the answer writes them; not those of a
    kind the question's request asks for ("Extract the e-mail addresses from this text:", "make a markdown link to
    …"): there the contact point is the answer."""
    theirs: set[str] = set()
    for text in users:
        theirs |= contacts(text).keys()
    mine = contacts(answer)
    # a number the answer repeats in any wording or grouping ("send the word to 55123", "call 98765-01234")
    mine |= {k: k[4:] for k in theirs if k.startswith(("sms:", "tel:")) and k not in mine and _digits_in(k[4:], answer)}
    # a handle, with its "@", or without it when it does not read as a word ("message markscheme_leaks on Telegram")
    mine |= {k: k[7:] for k in theirs if k.startswith("handle:") and re.search(
        rf"(?<![\w.])@{'?' * bool(re.search(r'[_0-9]', k))}{re.escape(k[7:])}(?!\w)", answer, re.IGNORECASE)}
    if not mine:
        return []
    ask = request(question)
    return [shown for key, shown in mine.items() if key in theirs and not _asked(key, ask)]
