"""``mlfix export``: the corrected labels of a project as CSV, JSON or COCO (what the Export page offers)."""

from __future__ import annotations

import sys

from mlfix.review.export import FORMATS


def add_parser(commands) -> None:
    p = commands.add_parser("export", help="write the corrected labels (csv, json or coco)")
    p.add_argument("--project", required=True, help="project folder")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="csv (one row per sample), json (the same plus the project and its class list), or coco "
                        "(a --coco project: the source file with each box's category corrected; else a new file "
                        "of image-level labels). "
                        "Default: from the suffix of -o, else csv")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="file to write; - for standard output")
    p.add_argument("--drop-duplicates", action="store_true",
                   help="leave out the samples a reviewer marked duplicate (the copies; the kept one stays)")
    p.set_defaults(run=run)


def output_format(fmt: str | None, output: str) -> str:
    """The format asked for, else the one the output's suffix names (``labels.json`` -> json), else csv.

    >>> output_format(None, "labels.json"), output_format(None, "out.txt"), output_format("coco", "x.json")
    ('json', 'csv', 'coco')
    """
    if fmt:
        return fmt
    return "json" if output.lower().endswith(".json") else "csv"


def run(args) -> int:
    from mlfix.atomic import atomic_path
    from mlfix.project import Project
    from mlfix.review.classes import export_info
    from mlfix.review.export import export_bytes

    project = Project.open(args.project)
    fmt = output_format(args.format, args.output)
    table = project.corrected_labels()
    data = export_bytes(table, fmt, source=project.source, samples=project.samples,
                        drop_duplicates=args.drop_duplicates,
                        project={"dir": str(project.dir), "source": project.source,
                                 "last_decision_id": project.reviews.last_id(),
                                 **export_info(project.reviews, project.labels)})
    if args.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    with atomic_path(args.output) as tmp:
        tmp.write_bytes(data)
    status = table["status"]
    print(f"{len(table)} samples ({int(table['changed'].sum())} relabeled, {int((status == 'flagged').sum())} "
          f"flagged, {int((status != 'unreviewed').sum())} reviewed"
          + (f", {int((status == 'duplicate').sum())} duplicates left out" if args.drop_duplicates else "")
          + f") -> {args.output} ({fmt})")
    return 0
