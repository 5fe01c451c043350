#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests when it is missing (Playwright drives the
# system browser; no browser is downloaded by Playwright itself).
# Exit 0 when a browser is there afterwards; exit 3 when no package manager can install it
# (the browser tests then skip and say so); any other failure is an error.
set -euo pipefail
for candidate in chromium chromium-browser; do
  if command -v "$candidate" >/dev/null 2>&1; then
    echo "chromium: $(command -v "$candidate")"
    exit 0
  fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is not installed and there is no apt-get to install it: browser tests will be skipped" >&2
  exit 3
fi
as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
  else
    echo "chromium is not installed and installing it needs root (or password-less sudo)" >&2
    exit 1
  fi
fi
echo "installing Debian's chromium (apt-get) for the browser tests..."
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium
