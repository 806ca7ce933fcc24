"""``python -m simulators``: write the demo fleet, or simulate without the citytel CLI."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from citytel.config import Settings
from simulators import cli, fleet


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen command."""
    parser = argparse.ArgumentParser(prog="python -m simulators")
    commands = parser.add_subparsers(dest="command", required=True)
    fleet.add_arguments(commands.add_parser("fleet", help="write the demo fleet GeoJSON"))
    cli.add_arguments(commands.add_parser("simulate", help="publish simulated readings"))
    args = parser.parse_args(argv)
    if args.command == "fleet":
        return fleet.run(args)
    return cli.run(args, Settings())


raise SystemExit(main())
