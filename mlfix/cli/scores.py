"""``mlfix scores``: the suspected label errors of a project."""

from __future__ import annotations


def add_parser(commands) -> None:
    p = commands.add_parser("scores", help="rank suspected label errors")
    p.add_argument("--project", required=True)
    p.add_argument("-o", "--output", help="CSV to write (default: print the top 20)")
    p.set_defaults(run=run)


def run(args) -> int:
    from mlfix.project import Project

    table = Project.open(args.project).scores()
    if args.output:
        table.to_csv(args.output, index=False)
        print(f"{len(table)} rows -> {args.output}")
    else:
        print(table.head(20).to_string(index=False))
    return 0
