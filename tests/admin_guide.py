"""What the tests read out of the admin guide (docs/admin-guide.md). Used by tests/unit/test_docs.py and
tests/ext/test_settings_file.py."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ADMIN_GUIDE = Path(__file__).resolve().parents[1] / "docs" / "admin-guide.md"


def user_settings_snippet() -> dict:
    """The admin guide's Z2JH values for the user-side settings (the ``yaml`` block with ``singleuser.extraFiles``)."""
    blocks = [yaml.safe_load(b) for b in re.findall(r"^```yaml\n(.*?)^```", ADMIN_GUIDE.read_text(), re.M | re.S)]
    found = [b for b in blocks if isinstance(b, dict) and "extraFiles" in (b.get("singleuser") or {})]
    assert len(found) == 1, "expected one yaml block with singleuser.extraFiles in the admin guide"
    return found[0]
