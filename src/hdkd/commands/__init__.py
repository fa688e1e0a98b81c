"""Sub-commands of the `hdkd` command line that live apart from cli.py (predict, export, explain, serve): each has
`register(subparsers)` and `run(args)`, and imports its heavy modules inside `run` so that `hdkd --help` stays fast."""

import argparse


def add_config_options(p: argparse.ArgumentParser, what: str, set_help: str = "override any config value") -> None:
    """`-c/--config YAML` (repeatable) and `--set KEY=VALUE`, as every command that reads a config takes them."""
    p.add_argument("--config", "-c", action="append", default=[], metavar="YAML", help=what)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
