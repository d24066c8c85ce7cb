"""The documentation is true: generated parts are current, and what the README and docs/ name exists.

- every repository path they name (links, and any ``dir/...`` starting with a top-level directory of this
  repository, ``tests/x.py::test_name`` included) exists; in-pod and example paths (``/etc/casa/...``,
  ``$CASA_CREDENTIALS_DIR/...``, ``/store/user/...``) start with ``/``, ``$`` or ``~`` and are not checked;
- every ``Class.trait`` (also ``c.Class.trait``, ``hub.config.Class.trait``, ``Class.method(...)``) exists on
  that class, and every bare Casa trait name in backticks (``casa_mount_path``) on some Casa class;
- every command they show runs or exists: ``python -m MODULE`` (importable and runnable; Casa's own small CLIs
  are run with the documented arguments), ``casa-hub-keys ...`` (declared in pyproject.toml and run), and the
  ``--flags`` given to a script of this repository (``scripts/*.sh``, ``benchmarks/*.py``);
- the example tables (storage directory names, HTCondor accounts) are what the code computes;
- the admin guide's troubleshooting messages still occur in the code, and its Z2JH snippet for the user-side
  settings validates against the chart's schema.

Each rule is checked against a made-up name too (``test_*_catches_*``), so the checks cannot pass vacuously.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.admin_guide import ADMIN_GUIDE, user_settings_snippet

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# ====================================================================================== generated reference
def test_config_reference_is_current():
    result = subprocess.run([sys.executable, "docs/gen_config_reference.py", "--check"], cwd=REPO)
    assert result.returncode == 0, (
        "docs/config-reference.md is stale: run .venv/bin/python docs/gen_config_reference.py"
    )


def test_every_casa_trait_has_help():
    sys.path.insert(0, str(REPO / "docs"))
    import gen_config_reference as gen

    text = gen.render()
    assert "(no help)" not in text
    for cls in ("CasaAuthenticator", "CasaMinter", "CasaSpawner", "CasaLocalSpawner", "CasaClusterSettings"):
        assert f"## {cls}" in text


# ====================================================================================== reading the docs
FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
INLINE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)


def code_spans(text: str) -> list[str]:
    """Every piece of code in a Markdown text: each line of a fenced block, each inline code span (white space
    folded: a span may wrap)."""
    spans = [line for block in FENCE.findall(text) for line in block.splitlines()]
    prose = FENCE.sub("", text)
    spans += [" ".join(m.group(2).split()) for m in INLINE.finditer(prose)]
    return spans


# ====================================================================================== 1. paths
# what a fresh clone has at its top level, but not what building and testing leave there
_NOT_REPO = {
    ".git",
    ".venv",
    "node_modules",
    "test-artifacts",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "__pycache__",
    "build",
    "dist",
    "lib",
}


@functools.lru_cache
def _top_dirs() -> tuple[str, ...]:
    return tuple(sorted(p.name for p in REPO.iterdir() if p.is_dir() and p.name not in _NOT_REPO))


@functools.lru_cache
def _path_re() -> re.Pattern:
    # a repository path starts with a top-level directory (not after a word character, '/', '.', '$', '~' or '-':
    # '/etc/casa/...', '$CASA_CREDENTIALS_DIR/...', 'node.js/...' are not repository paths); './' may precede it
    dirs = "|".join(re.escape(d) for d in _top_dirs())
    return re.compile(rf"(?<![\w/.$~<>{{-])(?:\./)?((?:{dirs})/[\w.*/-]*)(?:::(\w+))?")


def path_problems(text: str, base: Path) -> list[str]:
    problems = []
    for m in _path_re().finditer(text):
        path, test_name = m.group(1).rstrip("."), m.group(2)
        target = REPO / path
        if "*" in path:
            if not list(REPO.glob(path)):
                problems.append(f"{path}: matches no file")
            continue
        if not target.exists():
            problems.append(f"{path}: no such file or directory")
        elif test_name and not re.search(rf"^\s*(async def|def|class) {test_name}\b", target.read_text(), re.M):
            problems.append(f"{path}::{test_name}: no such test")
    for m in re.finditer(r"\[[^\]]*\]\(([^)\s]+)\)", FENCE.sub("", text)):
        link = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", link):
            continue  # https:, mailto:
        file_part, _, anchor = link.partition("#")
        target = (base / file_part).resolve() if file_part else None
        if target is not None and not target.exists():
            problems.append(f"link {link}: no such file")
            continue
        if anchor and (target is None or target.suffix == ".md"):
            if anchor not in heading_anchors(target.read_text() if target is not None else text):
                problems.append(f"link {link}: no heading with that anchor")
    return problems


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a Markdown text's headings."""
    anchors = set()
    for heading in re.findall(r"^#+\s+(.*?)\s*$", FENCE.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_repository_path_the_docs_name_exists(doc):
    assert path_problems(doc.read_text(), doc.parent) == []


def test_the_path_check_catches_a_made_up_path():
    text = (
        "See `helm-values/extra-rbac.yaml`, [values](../helm-values/values.yaml), `/etc/casa/xcache.token` "
        "and `tests/hub/test_faults.py::test_hub_restart_restores_the_refresh_timer_and_refreshes_the_secret`."
    )
    assert path_problems(text, REPO / "docs") == []
    made_up = (
        "`helm-values/extra-rbak.yaml`, `./scripts/facilty.sh`, [x](../casa_hub/nothing.py), "
        "`tests/hub/test_faults.py::test_nothing`, [y](admin-guide.md#99-nowhere)"
    )
    assert len(path_problems(made_up, REPO / "docs")) == 5


# ====================================================================================== 2. traits
# the classes the docs name, by where they live (imported only when named)
CLASSES = {
    "CasaAuthenticator": "casa_hub.authenticator",
    "CasaMinter": "casa_hub.minter",
    "CasaRefresher": "casa_hub.refresher",
    "XCacheToken": "casa_hub.credentials.kinds.xcache_token",
    "XCacheMacaroon": "casa_hub.credentials.kinds.xcache_macaroon",
    "HTCondorToken": "casa_hub.credentials.kinds.htcondor",
    "ServiceXToken": "casa_hub.credentials.kinds.servicex",
    "DaskTLS": "casa_hub.credentials.kinds.dask_tls",
    "MLflowToken": "casa_hub.credentials.kinds.mlflow",
    "CredentialKind": "casa_hub.credentials.kind",
    "MintRequest": "casa_hub.credentials.kind",
    "Minted": "casa_hub.credentials.kind",
    "ManifestEntry": "casa_hub.credentials.layout",
    "CasaSpawner": "casa_hub.spawner",
    "CasaLocalSpawner": "casa_hub.local",
    "CasaRevocations": "casa_hub.revoke",
    "CasaCredentialsMixin": "casa_hub.mixin",
    "CredentialBundle": "casa_hub.credentials.bundle",
    "SpawnRefused": "casa_hub.errors",
    "CasaClusterSettings": "casa_hub_ext.options",
    "WorkerCredentials": "casa_hub_ext.worker_credentials",
    "ClientBundleSettings": "casa_hub_ext.client_bundle",
    "CasaExtensionApp": "casa_hub_ext.app",
    "MountedBundle": "casa_hub_ext.bundle",
    "CasaCluster": "casa_hub_ext.notebook",
    "Authenticator": "jupyterhub.auth",
    "JupyterHub": "jupyterhub.app",
    "Spawner": "jupyterhub.spawner",
    "LocalProcessSpawner": "jupyterhub.spawner",
    "CryptKeeper": "jupyterhub.crypto",
    "KubeSpawner": "kubespawner",
    "OAuthenticator": "oauthenticator.oauth2",
    "GenericOAuthenticator": "oauthenticator.generic",
    "ServerApp": "jupyter_server.serverapp",
    "Application": "traitlets.config.application",
}
# Casa's configurable classes: a bare trait name in backticks must be an attribute of one of these
CASA_CONFIGURABLES = (
    "CasaAuthenticator",
    "CasaRefresher",
    "CasaMinter",
    "CasaSpawner",
    "CasaLocalSpawner",
    "CasaClusterSettings",
    "WorkerCredentials",
    "ClientBundleSettings",
    "XCacheToken",
    "XCacheMacaroon",
    "HTCondorToken",
    "ServiceXToken",
    "DaskTLS",
    "MLflowToken",
)
# bare names that look like Casa traits but are not, on purpose
NOT_TRAITS = {
    "casa_hub",
    "casa_hub_ext",
    "casa_demo",  # packages
    "casa_identity",
    "casa_groups",  # auth_state keys (casa_groups is also a spawner attribute)
    "casa_allowed_groups",  # a key of a profile, not a trait
    "servicex_token_mode",  # the admin guide says it is gone
    "condor_token_create",
    "condor_store_cred",
    "condor_submit",
    "condor_reconfig",  # HTCondor's tools
    "casa_audit",  # the audit line's schema key (casa_hub/audit.py)
}
TRAIT_REF = re.compile(r"(?<![\w.])(c\.|hub\.config\.)?([A-Z][A-Za-z0-9]+)\.([A-Za-z_*][A-Za-z0-9_*]*)(\()?")
BARE_TRAIT = re.compile(
    r"^(?:casa|xcache|macaroon|condor|servicex|dask|issuer|credential|provider|id_token|"
    r"discovery|refresh|mint)_[a-z0-9_]+$"
)


@functools.lru_cache
def _class(name: str):
    return getattr(importlib.import_module(CLASSES[name]), name)


def _names_of(cls) -> set[str]:
    traits = set(cls.class_traits()) if hasattr(cls, "class_traits") else set()
    return traits | {n for n in dir(cls) if not n.startswith("__")}


@functools.lru_cache
def _metric_names() -> set[str]:
    """The Prometheus metrics Casa defines (a doc naming one that does not exist is caught like a trait) and
    the values of their bounded labels."""
    from prometheus_client import CollectorRegistry

    from casa_hub import metrics

    registry = CollectorRegistry()
    metrics.casa_metrics(registry)
    names = {m.name for m in registry.collect()} | {f"{m.name}_total" for m in registry.collect()}
    labels = (metrics.MINT_OUTCOMES, metrics.REFRESH_OUTCOMES, metrics.DELIVERY_CAUSES, metrics.SECRET_OPERATIONS)
    return names | {v for values in labels for v in values}


def trait_problems(text: str) -> list[str]:
    problems = []
    for span in [text, *code_spans(text)]:
        for m in TRAIT_REF.finditer(span):
            prefix, cls_name, attr, call = m.groups()
            if cls_name not in CLASSES:
                if prefix or cls_name.startswith("Casa"):
                    problems.append(f"{m.group(0)}: unknown class {cls_name}")
                continue
            cls = _class(cls_name)
            if "*" in attr:
                if not fnmatch.filter(getattr(cls, "class_traits", dict)(), attr):
                    problems.append(f"{cls_name}.{attr}: matches no trait")
            elif call:
                if not callable(getattr(cls, attr, None)):
                    problems.append(f"{cls_name}.{attr}(): no such method")
            elif hasattr(cls, "class_traits") and prefix and attr not in cls.class_traits(config=True):
                problems.append(f"{m.group(0)}: {cls_name} has no configurable trait {attr!r}")
            elif attr not in _names_of(cls):
                problems.append(f"{cls_name}.{attr}: no such trait or attribute")
    bare = {s for s in code_spans(text) if BARE_TRAIT.match(s)} - NOT_TRAITS
    known = set().union(*(_names_of(_class(c)) for c in CASA_CONFIGURABLES)) | _metric_names()
    problems += [f"`{name}`: no Casa class has this trait" for name in sorted(bare - known)]
    return sorted(set(problems))


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_trait_the_docs_name_exists(doc):
    assert trait_problems(doc.read_text()) == []


def test_the_trait_check_catches_made_up_names():
    good = (
        "`c.XCacheToken.lifetime`, `hub.config.CryptKeeper.keys`, `HTCondorToken.*_file`, "
        "`CasaMinter.mint(user)`, `Authenticator.allow_existing_users`, `KubeSpawner.tolerations`, "
        "`CasaClusterSettings.max_workers`, `retry_interval`, `credential_refresh_margin`"
    )
    assert trait_problems(good) == []
    made_up = (
        "`c.XCacheToken.lifetme`, `hub.config.CasaSpawnr.casa_mount_path`, `DaskTLS.*_duration`, "
        "`CasaAuthenticator.refresh_everything()`, `KubeSpawner.tolerance`, `casa_refresh_jiter`"
    )
    assert len(trait_problems(made_up)) == 6


# ====================================================================================== 3. commands
@functools.lru_cache
def _console_scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


# Casa's own small command-line tools: side-effect free, so the docs' invocations are run as written
RUNNABLE = {"casa_hub.keys", "casa_hub.credentials.storage", "casa_hub.credentials.htcondor"}


def _runnable_module(module: str) -> str | None:
    """Why ``python -m module`` cannot work (None: it can)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return "no such module"
    if spec.submodule_search_locations is not None:
        return None if importlib.util.find_spec(module + ".__main__") else "a package without __main__"
    source = Path(spec.origin).read_text() if spec.origin and spec.origin.endswith(".py") else ""
    return None if re.search(r"__name__\s*==\s*['\"]__main__['\"]", source) else "no __main__ block"


def _run_module(module: str, args: list[str]) -> str | None:
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, timeout=60)
    return None if result.returncode == 0 else f"exit {result.returncode}: {result.stderr.decode()[-300:]}"


def _script_text(path: Path) -> str:
    """A script's text plus that of the Python modules it runs (``-m module``): where its flags are parsed."""
    text = path.read_text()
    for module in re.findall(r"-m\s+([\w.]+)", text):
        spec = importlib.util.find_spec(module) if module.split(".")[0] in _top_dirs() else None
        if spec and spec.origin:
            text += Path(spec.origin).read_text()
    return text


def _words(line: str) -> list[str]:
    line = re.split(r"\s#\s|^#", line, maxsplit=1)[0]  # a shell comment
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def command_problems(text: str) -> list[str]:
    """What is wrong with the commands in ``text``'s code: each shell command (a line, or a part of one between
    ``&&``, ``;``, ``|``) is judged by its first word, after any ``NAME=value`` assignments."""
    problems = []
    for span in code_spans(text):
        for part in re.split(r"&&|\|\||;|\|", span):
            words = _words(part)
            words = words[: next((i for i, w in enumerate(words) if w.startswith((">", "<", "2>"))), len(words))]
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                words = words[1:]
            if not words:
                continue
            command, rest = words[0], words[1:]
            if re.fullmatch(r"(\S*/)?python3?(\.\d+)?", command) and rest and not rest[0].startswith("-"):
                command, rest = rest[0], rest[1:]  # python path/to/script.py ...
            if command == "casa-hub-keys" or re.fullmatch(r"casa-hub-[\w-]+", command):
                target = _console_scripts().get(command)
                if target is None:
                    problems.append(f"{command}: not in pyproject.toml [project.scripts]")
                elif rest:
                    if (why := _run_module(target.split(":")[0], rest)) is not None:
                        problems.append(f"{command} {' '.join(rest)}: {why}")
            elif re.fullmatch(r"(\S*/)?python3?(\.\d+)?", command) and rest[:1] == ["-m"] and len(rest) > 1:
                module, args = rest[1], rest[2:]
                if module in ("pip", "venv", "pytest", "build"):
                    continue
                if (why := _runnable_module(module)) is not None:
                    problems.append(f"python -m {module}: {why}")
                elif module in RUNNABLE and args and (why := _run_module(module, args)) is not None:
                    problems.append(f"python -m {module} {' '.join(args)}: {why}")
            elif re.fullmatch(r"(\./)?(scripts|benchmarks|docs)/[\w.-]+\.(sh|py)", command):
                script = REPO / command.removeprefix("./")
                if not script.is_file():
                    problems.append(f"{command}: no such script")
                    continue
                source = _script_text(script)
                problems += [
                    f"{command} {flag}: the script has no such option"
                    for flag in (w.split("=")[0] for w in rest if w.startswith("--"))
                    if not re.search(rf"""["'\s(\[]{re.escape(flag)}\b""", source)
                ]
    return sorted(set(problems))


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_command_the_docs_show_exists(doc):
    assert command_problems(doc.read_text()) == []


def test_the_command_check_catches_made_up_commands():
    good = (
        "```bash\ncasa-hub-keys issuer --algorithm RS256 > issuer.pem   # a comment\n"
        "python -m casa_hub.credentials.storage alice\n./scripts/facility.sh --port 8000 --config x.py\n"
        ".venv/bin/python benchmarks/bench_storm.py --users 200 --ramp 60\n```\n"
    )
    assert command_problems(good) == []
    assert command_problems("`kubectl -n jhub create secret generic casa-hub-keys --from-file=.`") == []
    made_up = (
        "```bash\ncasa-hub-keys rsa > x.pem\npython -m casa_hub.keygen issuer\n"
        "./scripts/facility.sh --prot 8000\n.venv/bin/python benchmarks/bench_storm.py --user 2\n```\n"
        "`casa-hub-tokens issuer`"
    )
    assert len(command_problems(made_up)) == 5


# ====================================================================================== examples tables
def _table_after(text: str, header: str) -> list[tuple[str, str]]:
    """The rows (first two cells, backticks stripped) of the table whose header line starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        rows.append((cells[0], cells[1]))
    return rows


def test_the_storage_directory_and_pool_account_examples_are_what_the_code_computes():
    from casa_hub.credentials.htcondor import condor_user
    from casa_hub.credentials.storage import user_dir

    text = ADMIN_GUIDE.read_text()
    userdirs = _table_after(text, "| hub user | `{userdir}` |")
    accounts = _table_after(text, "| hub user | pool account |")
    assert len(userdirs) >= 5 and len(accounts) >= 5
    assert [(name, user_dir(name)) for name, _ in userdirs] == userdirs
    assert [(name, condor_user(name)) for name, _ in accounts] == accounts


# ====================================================================================== troubleshooting
PLACEHOLDER = "\0"


@functools.lru_cache
def code_messages() -> tuple[str, ...]:
    """Every string literal in casa_hub/ and casa_hub_ext/, with ``%s``-style and f-string fields replaced by a
    placeholder (implicitly concatenated literals are one string, as Python sees them)."""
    out = []
    for path in sorted([*(REPO / "casa_hub").rglob("*.py"), *(REPO / "casa_hub_ext").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                out.append("".join(v.value if isinstance(v, ast.Constant) else PLACEHOLDER for v in node.values))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                out.append(re.sub(r"%[-#0-9.]*[sdrif]", PLACEHOLDER, node.value))
    return tuple(out)


def message_in_code(message: str) -> bool:
    """``message`` as the docs quote it (``…`` where the code fills something in) is in one string of the code."""
    pieces = [p for p in (p.strip(" ") for p in message.split("…")) if p]
    pattern = re.compile(".*?".join(re.escape(p) for p in pieces), re.S)
    return bool(pieces) and any(pattern.search(s) for s in code_messages())


def troubleshooting_messages() -> list[str]:
    """The quoted messages of the admin guide's troubleshooting section: the backticked text in the first
    column of its tables."""
    text = ADMIN_GUIDE.read_text()
    section = re.search(r"^## \d+\. Troubleshooting\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert section, "the admin guide has no troubleshooting section"
    messages = []
    for line in section.group(1).splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            first_cell = line.strip("|").split("|")[0]
            messages += [m.group(2) for m in INLINE.finditer(first_cell)]
    return messages


def test_every_troubleshooting_message_occurs_in_the_code():
    messages = troubleshooting_messages()
    assert len(messages) >= 20
    assert [m for m in messages if not message_in_code(m)] == []


def test_the_message_check_catches_a_changed_message():
    assert message_in_code("No fresh credentials for …: …; a new login is required")
    assert message_in_code("Casa cannot start: …")
    assert not message_in_code("No new credentials for …: …; a new login is required")
    assert not message_in_code("Casa could not start: …")


# ====================================================================================== user-side settings
def test_the_user_settings_snippet_is_valid_z2jh_values():
    from tests import helm

    snippet = user_settings_snippet()
    assert helm.schema_errors(helm.values(helm.CASA_VALUES, snippet)) == []
    assert helm.schema_errors(helm.values(snippet)) == []


def test_the_user_settings_snippet_configures_real_traits_read_from_real_variables():
    from traitlets.config import Config

    from casa_hub_ext.options import CasaClusterSettings

    singleuser = user_settings_snippet()["singleuser"]
    (settings_file,) = singleuser["extraFiles"].values()
    # Jupyter Server reads the extension's own config file (and jupyter_server_config.*) from its config path,
    # not the jupyter_server_config.d/ fragments (those only switch extensions on); tests/ext proves the load
    assert Path(settings_file["mountPath"]).name == "jupyter_casa_hub_ext_config.json"
    assert Path(settings_file["mountPath"]).parent.as_posix() in ("/etc/jupyter", "/usr/local/etc/jupyter")
    data = settings_file["data"]
    assert set(data) == {"CasaClusterSettings"}
    configurable = CasaClusterSettings.class_traits(config=True)
    assert set(data["CasaClusterSettings"]) <= set(configurable)
    CasaClusterSettings(config=Config(data))  # every value passes the traits' validation
    source = "".join(p.read_text() for p in (REPO / "casa_hub_ext").glob("*.py"))
    for name in singleuser.get("extraEnv", {}):
        assert re.search(rf"""["']{name}["']""", source), f"casa_hub_ext never reads {name}"


def values_snippets(text: str) -> list[dict]:
    """The ``yaml`` blocks of a Markdown text that are Z2JH values (a top-level ``hub`` or ``singleuser``)."""
    blocks = [yaml.safe_load(b) for b in re.findall(r"^[ \t]*```yaml\n(.*?)^[ \t]*```", text, re.M | re.S)]
    return [b for b in blocks if isinstance(b, dict) and {"hub", "singleuser"} & set(b)]


def values_problems(snippet: dict) -> list[str]:
    """Helm's refusals of ``snippet`` over the facility's values, and ``hub.config`` traits no class has."""
    from tests import helm

    problems = helm.schema_errors(helm.values(helm.CASA_VALUES, snippet))
    for cls_name, traits in ((snippet.get("hub") or {}).get("config") or {}).items():
        if cls_name not in CLASSES:
            problems.append(f"hub.config.{cls_name}: unknown class")
            continue
        configurable = _class(cls_name).class_traits(config=True)
        problems += [f"hub.config.{cls_name}.{t}: no such trait" for t in traits if t not in configurable]
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_values_snippet_in_the_docs_is_valid(doc):
    assert [p for snippet in values_snippets(doc.read_text()) for p in values_problems(snippet)] == []


def test_the_values_check_catches_a_made_up_trait():
    assert values_problems({"hub": {"config": {"CasaMinter": {"issuer_key_file": "/k/issuer.pem"}}}}) == []
    assert values_problems({"hub": {"config": {"CasaMinter": {"issuer_retired_key_file": "/k/old.pem"}}}})
    assert values_problems({"hub": {"confg": {}}})


def test_the_schema_check_catches_a_wrong_extra_files_shape():
    from tests import helm

    snippet = user_settings_snippet()
    ((key, settings_file),) = snippet["singleuser"]["extraFiles"].items()
    broken = {"singleuser": {"extraFiles": {key: {"path": settings_file["mountPath"], "data": {}}}}}
    assert helm.schema_errors(helm.values(broken))
