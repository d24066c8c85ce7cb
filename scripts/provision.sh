#!/usr/bin/env bash
# Install everything Casa Hub's tests and local facility need, pinned and idempotent.
#   - Debian packages: XRootD 5.5 with SciTokens/macaroons/XCache plugins, Chromium, debootstrap, HAProxy
#   - .venv with the pinned Python dependencies and both Casa packages (editable)
#   - configurable-http-proxy from npm (package-lock.json)
#   - an HTCondor 23.9 personal-pool root (Debian trixie, debootstrap) in $CASA_CONDOR_ROOT
#   - the Z2JH chart's hub environment: a Debian sid root (debootstrap) with Python 3.14 and node, and in it
#     a venv with the chart image's pins (requirements/hub-z2jh.txt) + casa-hub (editable), in $CASA_Z2JH_ROOT;
#     scripts/z2jh-hub-python runs it
# Re-running it is cheap: every step checks whether its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${CASA_PYTHON:-python3.11}
CONDOR_ROOT=${CASA_CONDOR_ROOT:-/var/cache/casa-hub/condor-root}
Z2JH_ROOT=${CASA_Z2JH_ROOT:-/var/cache/casa-hub/sid-root}
Z2JH_DEBS="python3.14 python3.14-venv nodejs ca-certificates"
CONDOR_VERSION=23.9.6+dfsg-2.1+b10
XROOTD_VERSION=5.5.3-1
HAPROXY_VERSION=2.6.12-1+deb12u4

log() { printf '[provision] %s\n' "$*" >&2; }

apt_packages=(
  "xrootd-server=$XROOTD_VERSION" "xrootd-client=$XROOTD_VERSION" "xrootd-plugins=$XROOTD_VERSION"
  "xrootd-server-plugins=$XROOTD_VERSION" "xrootd-scitokens-plugins=$XROOTD_VERSION"
  chromium debootstrap
  "haproxy=$HAPROXY_VERSION"  # the SNI router in tests/consumers/test_sni_router.py (TLS passthrough by SNI)
)
missing=()
for p in "${apt_packages[@]}"; do
  name=${p%%=*}; want=${p#*=}
  have=$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null || true)
  if [[ $have != "install ok installed"* ]] || { [[ $p == *=* ]] && [[ $have != *" $want" ]]; }; then missing+=("$p"); fi
done
if ((${#missing[@]})); then
  log "apt: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x .venv/bin/python ]]; then
  log "venv: creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.casa-requirements.sha256
want=$(cat requirements/test.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  log "pip: installing pinned requirements"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip==26.3
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements/test.txt
  # the JupyterLab front end is built by its own step below, not by the editable install's jupyter-builder hook;
  # the link made below must not be there while pip lays out shared-data (it would write into the source tree)
  rm -f .venv/share/jupyter/labextensions/casa-hub-ext
  SKIP_JUPYTER_BUILDER=1 .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi

if [[ ! -x node_modules/.bin/configurable-http-proxy ]]; then
  log "npm: installing configurable-http-proxy (package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi

# the Casa JupyterLab extension (js/ -> casa_hub_ext/labextension), rebuilt when its sources change; the same
# npm build the wheel's jupyter-builder hook runs (pyproject.toml): @jupyter/builder + @jupyterlab/core-meta from npm
js_stamp=.venv/.casa-js-build.sha256  # outside js/: the hook rebuilds when anything in js/ is newer than the output
js_want=$(cat js/package.json js/package-lock.json js/tsconfig.json js/src/*.ts js/style/* | sha256sum | cut -d' ' -f1)
if [[ ! -f casa_hub_ext/labextension/package.json || ! -f $js_stamp || $(cat "$js_stamp") != "$js_want" ]]; then
  log "npm: building the JupyterLab extension (js/package-lock.json)"
  (cd js && npm ci --no-audit --no-fund --loglevel=error >/dev/null && npm run --silent build >/dev/null)
  echo "$js_want" > "$js_stamp"
fi
# the editable install does not copy shared-data: link the built extension where JupyterLab looks
mkdir -p .venv/share/jupyter/labextensions .venv/etc/jupyter/jupyter_server_config.d
[[ -L .venv/share/jupyter/labextensions/casa-hub-ext ]] || rm -rf .venv/share/jupyter/labextensions/casa-hub-ext
ln -sfn "$ROOT/casa_hub_ext/labextension" .venv/share/jupyter/labextensions/casa-hub-ext
ln -sfn "$ROOT/jupyter-config/jupyter_server_config.d/casa_hub_ext.json" \
  .venv/etc/jupyter/jupyter_server_config.d/casa_hub_ext.json

if [[ -n ${CASA_PROVISION_MINIMAL:-} ]]; then
  log "ready (minimal: no HTCondor root; venv: $ROOT/.venv)"
  exit 0
fi
if [[ ! -f $CONDOR_ROOT/.casa-ready ]] || [[ $(cat "$CONDOR_ROOT/.casa-ready") != "$CONDOR_VERSION" ]]; then
  log "htcondor: building a Debian trixie root with condor $CONDOR_VERSION in $CONDOR_ROOT"
  rm -rf "$CONDOR_ROOT.tmp"; mkdir -p "$(dirname "$CONDOR_ROOT")"
  debootstrap --variant=minbase trixie "$CONDOR_ROOT.tmp" >/dev/null
  chroot "$CONDOR_ROOT.tmp" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends condor=$CONDOR_VERSION >/dev/null"
  chroot "$CONDOR_ROOT.tmp" apt-get clean
  echo "$CONDOR_VERSION" > "$CONDOR_ROOT.tmp/.casa-ready"
  rm -rf "$CONDOR_ROOT"; mv "$CONDOR_ROOT.tmp" "$CONDOR_ROOT"
fi
# worker nodes read storage with the XRootD client (tests/consumers/test_worker_token_refresh.py); trixie's pin
if ! chroot "$CONDOR_ROOT" dpkg -s xrootd-client xrootd-plugins >/dev/null 2>&1; then
  log "htcondor: adding the XRootD client to the worker node root"
  chroot "$CONDOR_ROOT" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends xrootd-client=5.8.1-1 xrootd-plugins=5.8.1-1 >/dev/null"
  chroot "$CONDOR_ROOT" apt-get clean
fi

# The Z2JH chart's hub: JupyterHub 5.5.0 etc. (the chart image's pins) on Python 3.14, as in its hub image
# (python:3.14-slim). Debian sid has python3.14; wheels are downloaded here (PyPI) and installed offline in the root.
if [[ ! -f $Z2JH_ROOT/.casa-ready ]] || [[ $(cat "$Z2JH_ROOT/.casa-ready") != "sid $Z2JH_DEBS" ]]; then
  log "z2jh: building a Debian sid root with $Z2JH_DEBS in $Z2JH_ROOT"
  rm -rf "$Z2JH_ROOT.tmp"; mkdir -p "$(dirname "$Z2JH_ROOT")"
  debootstrap --variant=minbase sid "$Z2JH_ROOT.tmp" >/dev/null
  # sid's Release file can be past its Valid-Until date
  chroot "$Z2JH_ROOT.tmp" sh -c "apt-get -o Acquire::Check-Valid-Until=false update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false install -y -qq \
         --no-install-recommends $Z2JH_DEBS >/dev/null"
  chroot "$Z2JH_ROOT.tmp" apt-get clean
  echo "sid $Z2JH_DEBS" > "$Z2JH_ROOT.tmp/.casa-ready"
  rm -rf "$Z2JH_ROOT"; mv "$Z2JH_ROOT.tmp" "$Z2JH_ROOT"
fi
z2jh_stamp=$Z2JH_ROOT/opt/hub/.casa-requirements.sha256
z2jh_want=$( (cat requirements/hub-z2jh.txt pyproject.toml "$Z2JH_ROOT/.casa-ready"; echo "$ROOT") | sha256sum)
z2jh_want=${z2jh_want%% *}
if [[ ! -f $z2jh_stamp || $(cat "$z2jh_stamp") != "$z2jh_want" ]]; then
  log "z2jh: hub venv with requirements/hub-z2jh.txt (Python 3.14) in $Z2JH_ROOT/opt/hub"
  rm -rf "$Z2JH_ROOT/wheels" "$Z2JH_ROOT/opt/hub"; mkdir -p "$Z2JH_ROOT/wheels/casa"
  .venv/bin/python -m pip download -q --disable-pip-version-check --python-version 3.14 --only-binary=:all: \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
    -d "$Z2JH_ROOT/wheels" -r requirements/hub-z2jh.txt
  cp requirements/hub-z2jh.txt "$Z2JH_ROOT/wheels/"
  # casa-hub itself, editable (a .pth naming $ROOT, which scripts/z2jh-hub-python mounts at the same path);
  # no build hooks: the hub needs no front end
  HATCH_BUILD_NO_HOOKS=true .venv/bin/python -c 'import sys, hatchling.build as b; b.build_editable(sys.argv[1])' \
    "$Z2JH_ROOT/wheels/casa" >/dev/null
  # a clean environment in the root: none of this machine's pip settings (indexes, find-links) apply there
  chroot "$Z2JH_ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_DISABLE_PIP_VERSION_CHECK=1 \
      PIP_ROOT_USER_ACTION=ignore sh -ec '
    python3.14 -m venv /opt/hub
    /opt/hub/bin/python -m pip install -q --no-index --find-links /wheels -r /wheels/hub-z2jh.txt
    /opt/hub/bin/python -m pip install -q --no-index --no-deps /wheels/casa/*.whl
    /opt/hub/bin/python -m pip check >/dev/null || /opt/hub/bin/python -m pip check'
  echo "$z2jh_want" > "$z2jh_stamp"
fi
log "ready (venv: $ROOT/.venv, condor root: $CONDOR_ROOT, z2jh hub root: $Z2JH_ROOT)"
