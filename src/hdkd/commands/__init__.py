"""The `hdkd` sub-commands that `hdkd.cli` registers: each module has `register(subparsers)` and `run(args)`."""
