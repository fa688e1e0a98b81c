"""The sub-commands `hdkd` adds beside its core ones: each module has `register(subparsers)` and `run(args)`."""
