"""Hub user names that real providers produce and attackers choose, as pairs to test isolation with.

Every name here is a valid Casa hub user name (what ``CasaAuthenticator.normalize_username`` returns and
``validate_username`` accepts: lower case, NFC, no ``/``, no control or space characters, NFKC-stable).
Each pair is two *different* users; a credential of either must grant nothing of the other's.
"""

from __future__ import annotations

# (first, second, why the pair is dangerous)
HOSTILE_PAIRS: list[tuple[str, str, str]] = [
    ("ali", "alice", "string prefix"),
    ("alice", "alice2", "string prefix with a digit"),
    ("1", "12", "numeric prefix"),
    ("bob", "bob@x", "HTCondor splits a subject at the first @"),
    ("bob", "bob@cern.ch", "e-mail-like name whose local part is another user"),
    ("alice.smith", "alice-smith", "punctuation folded the same way"),
    ("alice_smith", "alice-smith", "underscore and hyphen"),
    ("alice", "ali%63e", "percent-decodes to the other"),
    ("a%2fb", "a", "percent-encoded slash"),
    ("ali", "ali~", "the storage terminator in a name"),
    ("ali~", "ali=7e", "an escape sequence spelled out in a name"),
    ("dörte", "dorte", "accent dropped"),
    ("jürgen", "juergen", "umlaut transliterated"),
    ("用户", "用户二", "non-Latin prefix"),
    ("x" * 70 + "1", "x" * 70 + "2", "differ only after 64 bytes"),
    ("é" * 40, "é" * 41, "non-ASCII, longer than 64 bytes, prefix"),
    ("a" * 200, "a" * 201, "very long prefix"),
    (".alice", "alice", "leading dot"),
    ("alice", "alice.", "trailing dot (JupyterHub itself refuses '.' and '..')"),
]


def pair_id(pair: tuple[str, str, str]) -> str:
    """A short pytest id for a pair."""
    first, second, _ = pair
    return f"{first[:12]!r}-{second[:12]!r}"
