"""Seeded PII values, chat templates and hard negatives for scripts/bench_pii.py.

``VALUES[type](rng, tset)`` (scripts/pii_seeds_values.py) → (the text put in the sentence, the PII string inside
it). ``tset`` "A" is the development set, "B" the evaluation set: B draws from formats A never uses (marked
``B only``) besides the shared ones, and its sentences (``TEMPLATES["B"]``, ``NEGATIVES["B"]``) are other ones.
"""
from __future__ import annotations

from pii_seeds_values import VALUES, luhn_complete, rand

__all__ = ["NEGATIVES", "TEMPLATES", "VALUES"]


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
                       "pi is 3.14159265358979, e is 2.71828182845904", f"{a} + {b} = {a + b}, right?"])


def _neg_code(rng):
    return rng.choice(["token = tokenizer(text)\npassword = input('Password: ')",
                       "std::vector<int> v; auto it = std::find(v.begin(), v.end(), 42);",
                       f"app.run(host='0.0.0.0', port={rng.randint(3000, 9000)})",
                       f"curl http://localhost:{rng.randint(3000, 9000)}/health",
                       "re.compile(r'\\d{3}-\\d{4}')", "SELECT id, email FROM users WHERE age > 30;",
                       f"git checkout {rand(rng, 40, '0123456789abcdef')}"])


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
                       f"{rng.randint(0, 9)}", f"uuid {rand(rng, 8, '0123456789abcdef')}-4b2c-9d1e-"
                       f"{rand(rng, 4, '0123456789abcdef')}-{rand(rng, 12, '0123456789abcdef')}",
                       f"resolution {rng.choice(['1920x1080', '2560x1440', '3840x2160'])}, "
                       f"color #{rand(rng, 6, 'abcdef0123456789')}",
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
                       f"the sha256 is {rand(rng, 64, '0123456789abcdef')}",
                       f"model gpt-4o-2024-08-06 vs llama-3.1-{rng.choice([8, 70, 405])}b",
                       f"seed {rng.randint(0, 2 ** 31)} gave loss 0.{rng.randint(1000, 9999)}"])


NEGATIVES["B"] = [_b(f, _WRAPS_B) for f in NEGATIVES["A"]] + [_neg_b_only]
