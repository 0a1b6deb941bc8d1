"""The ``mlfix`` command: index, train, scores, serve, status, export (one module per command in this package).

    mlfix index --images PATH [--labels CSV | --coco JSON] --project DIR [--backbone NAME[+NAME...]]
                [--image-size PX] [--tta-flip] [--words K] [--weights auto|random|imagenet|offline|trained|FILE]
                [--embeddings FILE [--embedding-ids FILE]] [--engine local|ray [--ray-address ADDR]]
    mlfix train --project DIR [--epochs N] [--batch-size B] [--image-size PX] [--init offline|random|imagenet|FILE] [--lr LR] [--no-flip]
    mlfix finetune --project DIR [--folds K] [--epochs N] [--image-size PX] [--train head|last|last2|last3|all] [--max-train N]
    mlfix scores --project DIR [-o scores.csv] [--pred-probs FILE [--classes A,B,...] [--logits]]
    mlfix serve --project DIR [--port PORT] [--address ADDR] [--db URL]
    mlfix status --project DIR
    mlfix export --project DIR [--format csv|json|coco] [--drop-duplicates] -o FILE
    mlfix --version
"""

from __future__ import annotations

import argparse
import sys

from mlfix.cli import export, finetune, index, scores, serve, status, train

COMMANDS = (index, train, finetune, scores, serve, status, export)  # each module: add_parser(commands) and run(args)


def main(argv: list[str] | None = None) -> int:
    from mlfix import __version__

    parser = argparse.ArgumentParser(prog="mlfix", description="Find and fix wrong labels in image datasets.")
    parser.add_argument("--version", action="version", version=f"mlfix {__version__}")
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

