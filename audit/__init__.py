"""Auditing: the hash chain and the copies of the ledger (store, topic, mirror) checked against each other."""
