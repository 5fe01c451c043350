"""The command line's exit codes besides 0 (ok), 1 (user error), 2 (usage) and 3 (internal)."""

#: A temporary failure (a busy store or database, an unreachable broker): the same command can
#: simply be run again later (sysexits' EX_TEMPFAIL).
EXIT_TRANSIENT = 75
#: A run stopped by Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130
#: The reader of the output went away (`crm-ledger ... | head`): 128 + SIGPIPE, as other tools
#: end then, and without a message (what the reader read is all it wanted).
EXIT_BROKEN_PIPE = 141
