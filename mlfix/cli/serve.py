"""``mlfix serve``: the review app on a project."""

from __future__ import annotations

import sys

def add_parser(commands) -> None:
    p = commands.add_parser("serve", help="start the review app on a project")
    p.add_argument("--project", required=True, help="project folder (made by `mlfix index`)")
    p.add_argument("--port", type=int, default=8501,
                   help="port the app listens on (default 8501); open http://ADDRESS:PORT in a browser")
    p.add_argument("--address", default="localhost", help="0.0.0.0 to share on the network")
    p.add_argument("--db", default=None, metavar="URL",
                   help="decisions database, e.g. postgresql+psycopg://mlfix@dbhost/mlfix (sets MLFIX_DB_URL; "
                        "default: MLFIX_DB_URL, else reviews.db in the project)")
    p.add_argument("--db-retries", type=int, default=5, metavar="N",
                   help="how often to try reaching the database before giving up (default 5)")
    p.add_argument("--insecure", action="store_true",
                   help="serve a non-loopback --address without sign-in (everyone who reaches it is admin); "
                        "refused otherwise: set MLFIX_ADMIN_TOKEN and MLFIX_REVIEWER_TOKEN instead")
    p.set_defaults(run=run)


def run(args) -> int:
    import os
    import subprocess

    from mlfix.errors import AuthConfigError, SettingsError, UnsafeServeError
    from mlfix.project import Project
    from mlfix.review.store import ENV_DB_URL, ReviewStore, StoreUnavailable
    from mlfix.service.server import check_deployment

    project = Project.open(args.project)
    env = dict(os.environ)
    if args.db:
        env[ENV_DB_URL] = args.db
    try:  # what protects the session, said before anything starts; refused when nothing would
        report = check_deployment(args.address, args.port, project.dir, env, insecure=args.insecure)
    except (AuthConfigError, SettingsError, UnsafeServeError) as error:
        print(f"mlfix serve: {error}", file=sys.stderr)
        return 2
    print("\n".join(report), file=sys.stderr, flush=True)
    if env.get(ENV_DB_URL):
        # Reach the database now, so a wrong URL or a server that is down is said here, once.
        try:
            ReviewStore.connect_with_retry(env[ENV_DB_URL], attempts=max(1, args.db_retries)).close()
        except (StoreUnavailable, ValueError) as error:
            print(f"mlfix serve: {error}", file=sys.stderr)
            return 2
    from mlfix.service.server import APP_ROOT, app_command

    return subprocess.call(app_command(project.dir, args.port, args.address), env=env, cwd=APP_ROOT)
