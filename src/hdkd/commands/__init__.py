"""Sub-commands of the `hdkd` command line that live apart from cli.py (predict, export, explain, serve): each has
`register(subparsers)` and `run(args)`, and imports its heavy modules inside `run` so that `hdkd --help` stays fast."""
