"""The read-only web pages for team leads (`crm-ledger serve`)."""
