"""Seeded PII values, chat templates and hard negatives for scripts/bench_pii.py.

``VALUES[type](rng, tset)`` → (the text put in the sentence, the PII string inside it). ``tset`` "A" is the
development set, "B" the evaluation set: B draws from formats A never uses (marked ``B only``) besides the
shared ones, and its sentences (``TEMPLATES["B"]``, ``NEGATIVES["B"]``) are other ones.
"""
from __future__ import annotations

import random
import string

import phonenumbers
from phonenumbers import PhoneNumberFormat, PhoneNumberType

ALNUM = string.ascii_letters + string.digits
FIRST = ["john", "maria", "li", "ahmed", "sofia", "peter", "aiko", "olga", "carlos", "fatima", "noah", "emma"]
LAST = ["smith", "garcia", "wang", "khan", "rossi", "mueller", "tanaka", "ivanova", "silva", "dubois", "oconnor"]


def _rand(rng: random.Random, n: int, chars: str = ALNUM) -> str:
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
        out += _rand(rng, int(num), chars)
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
    password = _rand(rng, rng.randint(6, 20), pw_chars)
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
    tok = {"openai": lambda: "sk-" + rng.choice(["", "proj-"]) + _rand(rng, 40),
           "github": lambda: rng.choice(["ghp_", "gho_"]) + _rand(rng, 36),
           "aws": lambda: "AKIA" + _rand(rng, 16, string.ascii_uppercase + string.digits),
           "slack": lambda: "xoxb-" + "-".join(_rand(rng, 12, string.digits) for _ in range(2)) + "-" + _rand(rng, 24),
           "google": lambda: "AIza" + _rand(rng, 35, ALNUM + "_-"), "hf": lambda: "hf_" + _rand(rng, 34),
           "stripe": lambda: "sk_live_" + _rand(rng, 24), "gitlab": lambda: "glpat-" + _rand(rng, 20),
           "jwt": lambda: "eyJhbGciOiJIUzI1NiJ9.eyJ" + _rand(rng, 30) + "." + _rand(rng, 43, ALNUM + "_-")}
    if kind in tok:
        t = tok[kind]()
        return rng.choice(["{}", "`{}`", "KEY={}"]).format(t), t
    pw = _rand(rng, rng.randint(3, 8), string.ascii_letters) + _rand(rng, rng.randint(1, 4), string.digits) + \
        _rand(rng, rng.randint(0, 3), "!#%&*?")
    if kind == "bearer":
        t = _rand(rng, 32, ALNUM + "-._")
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
    body = "\n".join(_rand(rng, 64, ALNUM + "+/") for _ in range(3))
    block = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{body}\n-----END OPENSSH PRIVATE KEY-----"
    return block, block


VALUES = {"EMAIL": email, "PHONE": phone, "CARD": card, "IBAN": iban, "IP": ip, "URL_CREDENTIALS": url_credentials,
          "SECRET": secret}

# ---------------------------------------------------------------- sentences

TEMPLATES = {
    "A": {
        "EMAIL": ["Can you write a polite reply to {}? She asked about the invoice.", "My email is {} if you need it.",
                  "Send the report to {} and cc {} please.", "Why does {} bounce every message I send?"],
        "PHONE": ["Call me at {} after 6pm.", "My number is {}, text me when you land.",
                  "The clinic's phone is {}. Is that a US number?", "Format {} as E.164 for my database."],
        "CARD": ["I paid with {} but the charge failed.", "Is {} a valid card number?",
                 "My card {} expires 09/27, can I still book?", "Here is the card: {}. Why is it declined?"],
        "IBAN": ["Please transfer the deposit to {} by Friday.", "My IBAN is {}, is the format right?",
                 "Rent goes to {} (landlord account).", "Can you check the checksum of {}?"],
        "IP": ["My server {} stopped answering pings.", "nginx logs show requests from {} every second.",
               "How do I block {} with iptables?", "Our VPN gives me {} but DNS fails."],
        "URL_CREDENTIALS": ["git clone {} fails with 403.", "My connection string is {} and it times out.",
                            "The script downloads from {} every night.", "Is it safe to put {} in the config?"],
        "SECRET": ["I set {} in my .env but the client says unauthorized.", "Here is my key {} why is it rejected?",
                   "curl sends {} and gets 401.", "Can you debug this: {}"],
    },
    "B": {
        "EMAIL": ["hey, reach me on {} tomorrow", "Draft an out-of-office reply that points people to {}.",
                  "user {} reported the bug; contact: {}", "Is '{}' a valid address per RFC 5322?"],
        "PHONE": ["my mom's mobile: {}", "If nobody answers, try {} or the front desk.",
                  "Phone {} keeps going to voicemail.", "please regex-validate {} for me"],
        "CARD": ["card no. {} cvv on the back", "They charged {} twice!!", "billing: {}, name on card as usual",
                 "Luhn check {} please"],
        "IBAN": ["beneficiary IBAN: {}", "wire it to {} — reference INV-2231", "Is {} a German or Austrian account?",
                 "account ({}) was closed last month"],
        "IP": ["ssh into {} gives connection refused", "allowlist {} in the security group",
               "traceroute stops at {}", "the camera's address is {}"],
        "URL_CREDENTIALS": ["DATABASE_URL={}", "pip install from {} asks for login again",
                            "why does `{}` show up in my logs?", "proxy set to {}"],
        "SECRET": ["oops I pasted {} into the public repo", "config has {}, still 403",
                   "rotate {} asap?", "the README says {}"],
    },
}


def _neg_version(rng):
    return rng.choice([f"Upgrade to {rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 20)}",
                       f"pip install torch=={rng.randint(1, 2)}.{rng.randint(0, 9)}.{rng.randint(0, 3)}",
                       f"npm i react@{rng.randint(15, 19)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}",
                       f"Python 3.{rng.randint(6, 13)}.{rng.randint(0, 15)} broke my venv"])


def _neg_date(rng):
    y, m, d = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([f"The meeting is on {y}-{m:02d}-{d:02d} at {rng.randint(8, 18)}:{rng.choice(['00', '30'])}",
                       f"Deadline {d:02d}/{m:02d}/{y}, timestamp {rng.randint(1_500_000_000, 1_800_000_000)}",
                       f"born {d}.{m}.{y}, logged at {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
                       f"{rng.randint(0, 59):02d}"])


def _neg_order(rng):
    return rng.choice([f"Order #{rng.randint(10 ** 9, 10 ** 10 - 1)} has not shipped",
                       f"ticket {rng.choice(['JIRA', 'OPS'])}-{rng.randint(100, 9999)} is blocked",
                       f"invoice no. {rng.randint(10 ** 7, 10 ** 9)} from March",
                       f"tracking number {rng.randint(10 ** 11, 10 ** 12)} shows delivered"])


def _neg_math(rng):
    a, b = rng.randint(100, 99999), rng.randint(100, 99999)
    return rng.choice([f"What is {a} * {b}? I got {a * b}.", f"2^{rng.randint(20, 40)} = {2 ** rng.randint(20, 40)}",
                       f"pi is 3.14159265358979, e is 2.71828182845904", f"{a} + {b} = {a + b}, right?"])


def _neg_code(rng):
    return rng.choice(["token = tokenizer(text)\npassword = input('Password: ')",
                       "std::vector<int> v; auto it = std::find(v.begin(), v.end(), 42);",
                       f"app.run(host='0.0.0.0', port={rng.randint(3000, 9000)})",
                       f"curl http://localhost:{rng.randint(3000, 9000)}/health",
                       "re.compile(r'\\d{3}-\\d{4}')", "SELECT id, email FROM users WHERE age > 30;",
                       f"git checkout {_rand(rng, 40, '0123456789abcdef')}"])


def _neg_card_like(rng):
    number = luhn_complete("4", 16, rng)
    bad = number[:-1] + str((int(number[-1]) + rng.randint(1, 9)) % 10)
    return rng.choice([f"test value {' '.join(bad[i:i + 4] for i in range(0, 16, 4))} should fail Luhn",
                       f"id {bad} is not a card"])


def _neg_price(rng):
    return rng.choice([f"It costs ${rng.randint(1, 9)},{rng.randint(100, 999)}.{rng.randint(10, 99)}",
                       f"€{rng.randint(10, 999)},{rng.randint(10, 99)} incl. VAT",
                       f"salary 1{rng.randint(10, 99)},000 per year", f"{rng.randint(2, 90)}% off until Sunday"])


def _neg_misc(rng):
    return rng.choice([f"ISBN 978-{rng.randint(0, 9)}-{rng.randint(10, 99)}-{rng.randint(100000, 999999)}-"
                       f"{rng.randint(0, 9)}", f"uuid {_rand(rng, 8, '0123456789abcdef')}-4b2c-9d1e-"
                       f"{_rand(rng, 4, '0123456789abcdef')}-{_rand(rng, 12, '0123456789abcdef')}",
                       f"resolution {rng.choice(['1920x1080', '2560x1440', '3840x2160'])}, "
                       f"color #{_rand(rng, 6, 'abcdef0123456789')}",
                       f"coordinates {rng.uniform(-90, 90):.5f}, {rng.uniform(-180, 180):.5f}",
                       "see docs.python.org/3/library/re.html", "email me the summary tomorrow"])


NEGATIVES = {
    "A": [_neg_version, _neg_date, _neg_order, _neg_math, _neg_code, _neg_card_like, _neg_price, _neg_misc],
}


def _b(fn, wraps):
    return lambda rng: rng.choice(wraps).format(fn(rng))


_WRAPS_B = ["quick question: {}", "{} — any idea why?", "In my notes: {}.", "{}", "Can you explain this? {}"]


def _neg_b_only(rng):
    return rng.choice([f"CVE-{rng.randint(2015, 2025)}-{rng.randint(1000, 49999)} affects 4.{rng.randint(0, 9)}.x",
                       f"my postcode is irrelevant, the bus is line {rng.randint(1, 400)}",
                       f"chmod 755 and umask 022 on build {rng.randint(1000, 99999)}",
                       f"the sha256 is {_rand(rng, 64, '0123456789abcdef')}",
                       f"model gpt-4o-2024-08-06 vs llama-3.1-{rng.choice([8, 70, 405])}b",
                       f"seed {rng.randint(0, 2 ** 31)} gave loss 0.{rng.randint(1000, 9999)}"])


NEGATIVES["B"] = [_b(f, _WRAPS_B) for f in NEGATIVES["A"]] + [_neg_b_only]
