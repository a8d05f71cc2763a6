#!/usr/bin/env bash
# Debian packages the project needs, installed when missing. Without arguments: what the demo
# and tests need, Fashion-MNIST (real labelled images) and Chromium (the report and the web page
# are checked in a real headless browser). With arguments: those packages (e.g. `make images`:
# buildah mmdebstrap, via scripts/install-image-tools.sh), then required: a system without
# apt-get fails instead of falling back.
# Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail
required=$#
packages=("$@")
[ $# -gt 0 ] || packages=(dataset-fashion-mnist chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  if [ "$required" -gt 0 ]; then
    echo "install-system-deps: not a Debian system: install ${missing[*]} yourself" >&2
    exit 1
  fi
  echo "install-system-deps: not a Debian system; the data commands will download instead (missing: ${missing[*]})" >&2
  exit 0
fi
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
echo "install-system-deps: installing ${missing[*]}"
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
