"""The configuration reference is generated from the traitlets help strings and kept current."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_config_reference_is_current():
    result = subprocess.run([sys.executable, "docs/gen_config_reference.py", "--check"], cwd=REPO)
    assert result.returncode == 0, "docs/config-reference.md is stale: run .venv/bin/python docs/gen_config_reference.py"


def test_every_casa_trait_has_help():
    sys.path.insert(0, str(REPO / "docs"))
    import gen_config_reference as gen

    text = gen.render()
    assert "(no help)" not in text
    for cls in ("CasaAuthenticator", "CasaMinter", "CasaSpawner", "CasaLocalSpawner"):
        assert f"## {cls}" in text
