"""The shared base of every package: errors, settings, progress reporting, Kafka helpers.

It imports nothing of the project, so every other package may import it. The command line is
the package `crm_cli`, at the top.
"""
