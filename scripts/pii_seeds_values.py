"""Seeded PII values for scripts/bench_pii.py (through scripts/pii_seeds.py, which adds the sentences).

``VALUES[type](rng, tset)`` → (the text put in the sentence, the PII string inside it). ``tset`` "A" is the
development set, "B" the evaluation set: B draws from formats A never uses (marked ``B only``) besides the
shared ones.
"""
from __future__ import annotations

import random
import string

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

ALNUM = string.ascii_letters + string.digits
FIRST = ["john", "maria", "li", "ahmed", "sofia", "peter", "aiko", "olga", "carlos", "fatima", "noah", "emma"]
LAST = ["smith", "garcia", "wang", "khan", "rossi", "mueller", "tanaka", "ivanova", "silva", "dubois", "oconnor"]


def rand(rng: random.Random, n: int, chars: str = ALNUM) -> str:
    return "".join(rng.choice(chars) for _ in range(n))


# ---------------------------------------------------------------- values

def email(rng, tset):
    f, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice([f"{f}.{last}", f"{f}_{last}", f"{f[0]}{last}", f"{f}{rng.randint(1, 999)}",
                        f"{f}+{rng.choice(['news', 'shop', 'work', 'git'])}", f"{f}.{last}{rng.randint(70, 99)}"])
    domain = rng.choice(["gmail.com", "mail.example.co.uk", "cs.univ-lyon.fr", "company.io", "eng.acme-corp.com",
                         "web.de", "startup.dev", "students.uni.edu.au", "outlook.com", "post.bank.ch"])
    addr = f"{local}@{domain}"
    if tset == "B":
        if rng.random() < 0.2:  # B only: capitals
            addr = addr.title() if rng.random() < 0.5 else addr.upper()
        wrap = rng.choice(["{}", "{}", "<{}>", "mailto:{}", "({})"])  # B only: brackets, mailto
        return wrap.format(addr), addr
    return addr, addr


NATIONAL = ["US", "GB", "DE", "FR", "IN", "AU"]
INTERNATIONAL_ONLY = ["JP", "ES", "IT", "BR", "MX", "NL", "SE", "ZA", "SG", "CA"]


def _valid_number(rng, region):
    kind = rng.choice([PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE])
    ex = phonenumbers.example_number_for_type(region, kind) or phonenumbers.example_number(region)
    nsn = str(ex.national_number)
    for _ in range(200):
        cand = nsn[:-5] + "".join(rng.choice(string.digits) for _ in range(5))
        num = phonenumbers.parse("+" + str(ex.country_code) + cand)
        if phonenumbers.is_valid_number(num):
            return num
    return ex


def phone(rng, tset):
    region = rng.choice(NATIONAL + (INTERNATIONAL_ONLY if tset == "B" else INTERNATIONAL_ONLY[:5]))
    num = _valid_number(rng, region)
    styles = ["intl", "e164"] + (["national", "national", "national_dots", "bare"] if region in NATIONAL else [])
    if tset == "B":
        styles += ["intl_dashes", "tel"] + (["paren_cc"] if region in NATIONAL else [])  # B only
    style = rng.choice(styles)
    intl = phonenumbers.format_number(num, PhoneNumberFormat.INTERNATIONAL)
    nat = phonenumbers.format_number(num, PhoneNumberFormat.NATIONAL)
    text = {"intl": intl, "e164": phonenumbers.format_number(num, PhoneNumberFormat.E164), "national": nat,
            "national_dots": nat.replace("(", "").replace(") ", ".").replace(" ", ".").replace("-", "."),
            "bare": "".join(c for c in nat if c.isdigit()), "intl_dashes": intl.replace(" ", "-"), "tel": intl,
            "paren_cc": f"(+{num.country_code}) {phonenumbers.format_number(num, PhoneNumberFormat.NATIONAL)}"}[style]
    return ("tel:" + text if style == "tel" else text), text


CARD_BRANDS = [("visa", ["4"], 16), ("mastercard", ["51", "52", "53", "54", "55"], 16),
               ("mastercard", [str(x) for x in range(2221, 2721, 37)], 16), ("amex", ["34", "37"], 15),
               ("discover", ["6011", "65"], 16), ("jcb", [str(x) for x in range(3528, 3590, 7)], 16),
               ("diners", ["36", "38"], 14), ("unionpay", ["62"], 16)]


def luhn_complete(prefix: str, length: int, rng) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, d in enumerate(reversed(body)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return body + str((10 - total % 10) % 10)


def _group(digits: str, sizes: list[int], sep: str) -> str:
    out, i = [], 0
    for s in sizes:
        out.append(digits[i:i + s])
        i += s
    return sep.join(out)


def card(rng, tset):
    brand, prefixes, length = rng.choice(CARD_BRANDS + ([("visa", ["4"], 19), ("unionpay", ["62"], 19)]
                                                         if tset == "B" else []))  # B only: 19 digits
    number = luhn_complete(rng.choice(prefixes), length, rng)
    sizes = {15: [4, 6, 5], 14: [4, 6, 4], 16: [4, 4, 4, 4], 19: [4, 4, 4, 4, 3]}[length]
    text = _group(number, sizes, rng.choice([" ", " ", "-", ""]))
    return text, text


IBAN_FORMATS = {"DE": "18n", "GB": "4a14n", "FR": "10n11c2n", "ES": "20n", "IT": "1a10n12c", "NL": "4a10n",
                "BE": "12n", "CH": "5n12c", "AT": "16n", "PL": "24n", "SE": "20n", "IE": "4a14n", "NO": "11n",
                "PT": "21n"}


def _bban(rng, spec: str) -> str:
    out, num = "", ""
    for ch in spec:
        if ch.isdigit():
            num += ch
            continue
        chars = {"n": string.digits, "a": string.ascii_uppercase, "c": string.digits * 3 + string.ascii_uppercase}[ch]
        out += rand(rng, int(num), chars)
        num = ""
    return out


def iban_value(rng, country: str) -> str:
    bban = _bban(rng, IBAN_FORMATS[country])
    rearranged = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(rearranged) % 97:02d}{bban}"


def iban(rng, tset):
    countries = list(IBAN_FORMATS) if tset == "B" else list(IBAN_FORMATS)[:10]  # B only: IE, NO, PT, SE-like
    value = iban_value(rng, rng.choice(countries))
    style = rng.choice(["grouped", "grouped", "compact"] + (["dashes"] if tset == "B" else []))
    text = {"compact": value, "grouped": " ".join(value[i:i + 4] for i in range(0, len(value), 4)),
            "dashes": "-".join(value[i:i + 4] for i in range(0, len(value), 4))}[style]
    return text, text


def ipv4(rng):
    first = rng.choice([10, 172, 192, rng.randint(11, 126), rng.randint(128, 223)])
    second = {10: rng.randint(0, 255), 172: rng.randint(16, 31), 192: 168}.get(first, rng.randint(0, 255))
    return f"{first}.{second}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def ipv6(rng):
    groups = [f"{rng.randint(0, 0xffff):x}" for _ in range(8)]
    groups[0] = rng.choice(["2001", "2a02", "2606", "fe80", "fd12"])
    style = rng.choice(["full", "zeros", "compressed"])
    if style == "full":
        return ":".join(g.zfill(4) for g in groups)
    if style == "zeros":
        return ":".join(groups)
    k = rng.randint(1, 4)
    return ":".join(groups[:k]) + "::" + ":".join(groups[k + 2:])


def ip(rng, tset):
    v6 = rng.random() < 0.4
    addr = ipv6(rng) if v6 else ipv4(rng)
    styles = ["plain", "plain", "port"] + (["cidr"] if tset == "B" else [])  # B only: CIDR
    style = rng.choice(styles)
    if style == "port":
        return (f"[{addr}]:{rng.randint(1, 65535)}" if v6 else f"{addr}:{rng.randint(1, 65535)}"), addr
    if style == "cidr":
        addr += f"/{rng.choice([48, 64]) if v6 else rng.choice([8, 16, 24, 32])}"
    return addr, addr


def url_credentials(rng, tset):
    scheme = rng.choice(["https", "http", "ftp", "postgres", "postgresql", "mysql", "redis", "amqp"]
                        + (["mongodb+srv", "sftp", "smb"] if tset == "B" else []))
    user = rng.choice(["admin", "deploy", "alice.smith", "svc_backup", "root", rng.choice(FIRST)])
    pw_chars = ALNUM + ("!$*-_.~" if tset == "A" else "!$*-_.~%;,=")
    password = rand(rng, rng.randint(6, 20), pw_chars)
    if tset == "B" and rng.random() < 0.2:
        password = password[:4] + "%40" + password[4:]  # B only: percent-encoded '@'
    host = rng.choice(["db.internal.example.com", "git.acme.io", "localhost", ipv4(rng), "files.example.org"])
    if rng.random() < 0.5:
        host += f":{rng.randint(1024, 65535)}"
    core = f"{user}:{password}@{host}"
    path = rng.choice(["", "/", "/repo.git", "/prod?sslmode=require", "/v1/data"])
    return f"{scheme}://{core}{path}", core


def secret(rng, tset):
    kinds = ["openai", "github", "aws", "slack", "google", "hf", "stripe", "jwt", "bearer", "quoted", "env", "said"]
    if tset == "B":
        kinds += ["gitlab", "pem", "yaml"]  # B only
    kind = rng.choice(kinds)
    tok = {"openai": lambda: "sk-" + rng.choice(["", "proj-"]) + rand(rng, 40),
           "github": lambda: rng.choice(["ghp_", "gho_"]) + rand(rng, 36),
           "aws": lambda: "AKIA" + rand(rng, 16, string.ascii_uppercase + string.digits),
           "slack": lambda: "xoxb-" + "-".join(rand(rng, 12, string.digits) for _ in range(2)) + "-" + rand(rng, 24),
           "google": lambda: "AIza" + rand(rng, 35, ALNUM + "_-"), "hf": lambda: "hf_" + rand(rng, 34),
           "stripe": lambda: "sk_live_" + rand(rng, 24), "gitlab": lambda: "glpat-" + rand(rng, 20),
           "jwt": lambda: "eyJhbGciOiJIUzI1NiJ9.eyJ" + rand(rng, 30) + "." + rand(rng, 43, ALNUM + "_-")}
    if kind in tok:
        t = tok[kind]()
        return rng.choice(["{}", "`{}`", "KEY={}"]).format(t), t
    pw = rand(rng, rng.randint(3, 8), string.ascii_letters) + rand(rng, rng.randint(1, 4), string.digits) + \
        rand(rng, rng.randint(0, 3), "!#%&*?")
    if kind == "bearer":
        t = rand(rng, 32, ALNUM + "-._")
        return f"Authorization: Bearer {t}", t
    if kind == "quoted":
        name = rng.choice(["password", "api_key", "secret", "token", "db_password"])
        return f'{name} = "{pw}"', pw
    if kind == "env":
        name = rng.choice(["PASSWORD", "DB_PASSWORD", "API_KEY", "SECRET_KEY", "AUTH_TOKEN"])
        return f"{name}={pw}", pw
    if kind == "said":
        return rng.choice(["my password is {}", "the password is {}", "pwd: {}"]).format(pw), pw
    if kind == "yaml":
        return f"api_key: '{pw}'", pw
    body = "\n".join(rand(rng, 64, ALNUM + "+/") for _ in range(3))
    block = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----"
    return block, block


VALUES = {"EMAIL": email, "PHONE": phone, "CARD": card, "IBAN": iban, "IP": ip, "URL_CREDENTIALS": url_credentials,
          "SECRET": secret}
