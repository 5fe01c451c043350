"""The `crm-ledger` command line: the top layer, which nothing else imports.

It builds the settings from flags and `CRM_LEDGER_*` variables, wires the packages below
(`ledger`, `projections`, `replay`, `schemas` over the shared base `crm_ledger`) and runs the
development services (the Kafka broker, the schema registry).
"""
