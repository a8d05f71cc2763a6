#!/usr/bin/env bash
# Debian packages `make images` needs: buildah (builds and runs images with chroot isolation: no
# Docker engine, no OCI runtime) and mmdebstrap (the base image from Debian packages: no
# registry). Idempotent; needs root (or sudo) only when something is missing.
exec bash "$(dirname "$0")/install-system-deps.sh" buildah mmdebstrap
