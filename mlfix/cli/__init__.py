"""The ``mlfix`` command: index, train, scores, serve (one module per command in this package).

    mlfix index --images PATH [--labels CSV | --coco JSON] --project DIR [--backbone NAME[+NAME...]]
                [--image-size PX] [--tta-flip] [--words K] [--weights auto|random|imagenet|offline|trained|FILE]
    mlfix train --project DIR [--epochs N] [--batch-size B] [--image-size PX] [--init random|imagenet|FILE] [--no-flip]
    mlfix scores --project DIR [-o scores.csv]
    mlfix serve --project DIR [--port PORT] [--address ADDR] [--db URL]
"""

from __future__ import annotations

import argparse
import sys

from mlfix.cli import index, scores, serve, train

COMMANDS = (index, train, scores, serve)  # each module: add_parser(commands) and run(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlfix", description="Find and fix wrong labels in image datasets.")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(commands)
    args = parser.parse_args(argv)
    from mlfix.errors import MlfixError

    try:
        return args.run(args) or 0
    except (MlfixError, OSError, ValueError, RuntimeError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"mlfix {args.command}: error: {message}", file=sys.stderr)
        return 2

