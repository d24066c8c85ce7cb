"""images/: each image installs the casa-hub wheel (built in a first stage as test_wheel.py builds it), never the
source tree or an editable install; their build context leaves out what a clean checkout does not have."""

from __future__ import annotations

import re

import pytest

from tests.support import REPO


@pytest.mark.parametrize("image, extra", [("hub", "hub"), ("user", "user")])
def test_image_installs_the_wheel(image, extra):
    text = (REPO / "images" / f"Dockerfile.{image}").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2, "a wheel stage, then the image"
    assert re.search(r"pip wheel .*--no-deps .*--wheel-dir /dist /src", stages[0])
    installs = re.findall(r"pip install[^\n]*", stages[1])
    assert installs and all(f'"$(echo /tmp/dist/casa_hub-*.whl)[{extra}]"' in line for line in installs), installs
    assert " -e " not in text and "--editable" not in text and "COPY . " not in stages[1]
    ignored = (REPO / "images" / f"Dockerfile.{image}.dockerignore").read_text().split()
    for path in (".venv", "**/node_modules", "casa_hub_ext/labextension"):
        assert path in ignored
