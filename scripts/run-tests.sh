#!/usr/bin/env bash
# Run the pytest suite; the session fixture starts (and always stops) the Kafka broker.
# pytest's exit code 5 ("no tests collected") is a failure here, never a pass.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
.venv/bin/python -m pytest -p no:cacheprovider "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
