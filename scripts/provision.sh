#!/usr/bin/env bash
# Install everything Casa Hub's tests and local facility need, pinned and idempotent.
#   - Debian packages: XRootD 5.5 with SciTokens/macaroons/XCache plugins, Chromium, debootstrap
#   - .venv with the pinned Python dependencies and both Casa packages (editable)
#   - configurable-http-proxy from npm (package-lock.json)
#   - an HTCondor 23.9 personal-pool root (Debian trixie, debootstrap) in $CASA_CONDOR_ROOT
# Re-running it is cheap: every step checks whether its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${CASA_PYTHON:-python3.11}
CONDOR_ROOT=${CASA_CONDOR_ROOT:-/var/cache/casa-hub/condor-root}
CONDOR_VERSION=23.9.6+dfsg-2.1+b10
XROOTD_VERSION=5.5.3-1

log() { printf '[provision] %s\n' "$*" >&2; }

apt_packages=(
  "xrootd-server=$XROOTD_VERSION" "xrootd-client=$XROOTD_VERSION" "xrootd-plugins=$XROOTD_VERSION"
  "xrootd-server-plugins=$XROOTD_VERSION" "xrootd-scitokens-plugins=$XROOTD_VERSION"
  chromium debootstrap
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
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi

if [[ ! -x node_modules/.bin/configurable-http-proxy ]]; then
  log "npm: installing configurable-http-proxy (package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi

# the Casa JupyterLab extension (js/ -> casa_hub_ext/labextension), rebuilt when its sources change
js_stamp=js/node_modules/.casa-build.sha256
js_want=$(cat js/package.json js/package-lock.json js/tsconfig.json js/src/*.ts js/style/* | sha256sum | cut -d' ' -f1)
if [[ ! -f casa_hub_ext/labextension/package.json || ! -f $js_stamp || $(cat "$js_stamp") != "$js_want" ]]; then
  log "npm: building the JupyterLab extension (js/package-lock.json)"
  staging=$(.venv/bin/python -c 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))')
  (cd js && npm ci --no-audit --no-fund --loglevel=error >/dev/null \
     && JUPYTERLAB_STAGING=$staging npm run --silent build >/dev/null)
  echo "$js_want" > "$js_stamp"
fi
# the editable install does not copy shared-data: link the built extension where JupyterLab looks
mkdir -p .venv/share/jupyter/labextensions .venv/etc/jupyter/jupyter_server_config.d
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
log "ready (venv: $ROOT/.venv, condor root: $CONDOR_ROOT)"
