"""How large a generated history can be: light, so the command line's options can say it."""

from __future__ import annotations

#: Every employee joins a minute apart in the 30 days before the history starts: more would
#: join after it started, behind events already written (the output is in time order).
MAX_EMPLOYEES = 30 * 24 * 60
#: Most of the customers register a second apart in those 30 days (after their first hour):
#: more would register after the history started.
MAX_CUSTOMERS = 3_000_000
