#!/usr/bin/env bash
# Debian packages `make images` needs: buildah (builds and runs images with chroot isolation: no
# Docker engine, no OCI runtime) and mmdebstrap (the base image from Debian packages: no
# registry). Idempotent; needs root (or sudo) only when something is missing.
set -euo pipefail
packages=(buildah mmdebstrap)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-image-tools: not a Debian system: install ${missing[*]} yourself" >&2
  exit 1
fi
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
echo "install-image-tools: installing ${missing[*]}"
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
