#!/usr/bin/env bash
# Run the pytest suite; the session fixture starts (and always stops) the Kafka broker.
# pytest's exit code 5 ("no tests collected") is a failure here, never a pass.
# Two test processes (pytest-xdist) share the files, one file at a time each, so a module's
# fixtures run once; each process starts the brokers its own tests need.
# CRM_LEDGER_TEST_PROCESSES=0 runs the suite in this one process.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
.venv/bin/python -m pytest -p no:cacheprovider \
  -n "${CRM_LEDGER_TEST_PROCESSES:-2}" --dist loadfile "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$status"
