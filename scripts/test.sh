#!/usr/bin/env bash
# Install everything the tests need (pinned, idempotent), then run the whole suite (after ruff check + format --check).
# With no arguments (CI, .ci/run), or with CASA_TEST_Z2JH=1, a second run follows: the hub-tier tests that start
# real hub processes (tests/hub/hub.py start_hub / running_hub) and the chart-config tier (tests/z2jh, its hub pod),
# with those hubs on the Z2JH chart's hub environment (requirements/hub-z2jh.txt: JupyterHub 5.5.0 on Python 3.14,
# scripts/z2jh-hub-python).
# In the first run pytest, the in-process hub tests and every hub process use .venv (the newest releases,
# requirements/test.txt). CASA_TEST_Z2JH=0 skips the second run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/provision.sh
PYTEST=(.venv/bin/python -m pytest -p no:cacheprovider -ra)
if { (($#)) && [[ ${CASA_TEST_Z2JH:-} != 1 ]]; } || [[ ${CASA_TEST_Z2JH:-} == 0 ]]; then
  exec "${PYTEST[@]}" "$@"
fi

# the whole suite (CI) starts with lint and format checks: ruff (requirements/test.txt), pyproject.toml [tool.ruff]
RUFF_PATHS=(casa_hub casa_hub_ext casa_demo tests benchmarks docs/*.py)
echo "== ruff check and ruff format --check: ${RUFF_PATHS[*]}"
.venv/bin/ruff check "${RUFF_PATHS[@]}"
.venv/bin/ruff format --check "${RUFF_PATHS[@]}"
# and the JupyterLab extension's: ESLint (typescript-eslint) and Prettier, js/eslint.config.mjs and js/.prettierrc.json
echo "== npm run lint and npm run prettier:check: js/"
(cd js && npm run --silent lint && npm run --silent prettier:check)

versions() {  # what a Python runs for a hub
  "$@" -c 'import sys, jupyterhub, oauthenticator, kubespawner, kubernetes_asyncio as k
print(f"JupyterHub {jupyterhub.__version__} (oauthenticator {oauthenticator.__version__}, KubeSpawner "
      f"{kubespawner.__version__}, kubernetes_asyncio {k.__version__}) on Python {sys.version.split()[0]}")'
}
Z2JH_PYTHON=$PWD/scripts/z2jh-hub-python
Z2JH_EXPECT="jupyterhub=$(sed -n 's/^jupyterhub==//p' requirements/hub-z2jh.txt) python=3.14"
mapfile -t Z2JH_TESTS < <({ grep -rlE --include='test_*.py' '\b(start_hub|running_hub)\(' tests; echo tests/z2jh; } |
                          sort -u)

echo "== run 1 (newest releases): pytest and all hub processes on $(versions .venv/bin/python)"
start=$SECONDS rc1=0
"${PYTEST[@]}" "$@" || rc1=$?
echo "== run 1: exit status $rc1 after $((SECONDS - start)) s"

echo "== run 2 (Z2JH chart): the hub processes on $(versions "$Z2JH_PYTHON")"
echo "   (pytest itself and in-process hubs stay on run 1's); ${#Z2JH_TESTS[@]} files: ${Z2JH_TESTS[*]}"
start=$SECONDS rc2=0
if ((${#Z2JH_TESTS[@]})); then
  CASA_HUB_PYTHON=$Z2JH_PYTHON CASA_HUB_EXPECT=$Z2JH_EXPECT "${PYTEST[@]}" "${Z2JH_TESTS[@]}" || rc2=$?
else
  rc2=5
fi
if ((rc2 == 5)); then
  echo "== run 2 ran no tests: that is a failure" >&2
  rc2=1
fi
echo "== run 2: exit status $rc2 after $((SECONDS - start)) s"
exit $((rc1 ? rc1 : rc2))
