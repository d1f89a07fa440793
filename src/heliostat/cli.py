"""The ``heliostat`` command: serve, ingest, demo-archive."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from heliostat.config import PROFILES, profile

if TYPE_CHECKING:
    from heliostat.catalog.store import Catalog
    from heliostat.subscriptions.channels.email import EmailSettings


def _ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from heliostat.archive.ingest import IngestReport, ingest, iter_jp2
    from heliostat.catalog.store import Catalog

    archive = Path(args.archive).resolve()
    if not archive.is_dir():
        print(f"heliostat: archive folder {archive} does not exist", file=sys.stderr)
        return 2
    if args.watch and args.paths:
        print("heliostat: --watch indexes the whole archive; name no paths", file=sys.stderr)
        return 2
    targets = [Path(p) for p in args.paths] or [archive]
    files = [] if args.watch else list(iter_jp2(targets))
    catalog_path = Path(args.catalog) if args.catalog else archive / ".heliostat" / "catalog"
    catalog_path.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(catalog_path, map_size=profile(args.profile).lmdb_map_size)
    if args.watch:
        try:
            return _watch(args, archive, catalog)
        finally:
            catalog.close()
    with tqdm(total=len(files), unit="file", disable=args.quiet) as bar:

        def progress(r: IngestReport) -> None:
            bar.update(r.seen - bar.n)
            bar.set_postfix(indexed=r.indexed, unchanged=r.unchanged, rejected=len(r.rejected))

        report = ingest(catalog, archive, files, on_batch=progress)
    catalog.close()
    for path, reason in report.rejected:
        print(f"rejected {path}: {reason}", file=sys.stderr)
    print(
        f"indexed {report.indexed}, unchanged {report.unchanged}, rejected {len(report.rejected)}"
    )
    return 1 if report.rejected and not (report.indexed or report.unchanged) else 0


def _serve_processes(args: argparse.Namespace, n: int) -> int:
    """Run n server processes on one port (SO_REUSEPORT) and relay SIGTERM/SIGINT to them.

    Workers are started with exec, not fork, so none inherits gRPC or LMDB state.
    """
    import signal
    import subprocess

    if args.grpc_port == 0:
        print("heliostat: several processes need an explicit --grpc-port", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", "heliostat.cli", "serve", "--archive", args.archive,
           "--host", args.host, "--grpc-port", str(args.grpc_port), "--profile", args.profile,
           "--processes", "1", "--reuse-port"]  # fmt: skip
    if args.catalog:
        cmd += ["--catalog", args.catalog]
    cmd += _delivery_args(args)
    if args.ingest:
        # Index once, before the workers start, rather than in every worker.
        _ingest(argparse.Namespace(archive=args.archive, catalog=args.catalog, paths=[],
                                   profile=args.profile, quiet=True, watch=None))  # fmt: skip
    workers = [subprocess.Popen(cmd) for _ in range(n)]

    def relay(signum: int, _frame: object) -> None:
        for w in workers:
            w.send_signal(signum)

    signal.signal(signal.SIGTERM, relay)
    signal.signal(signal.SIGINT, relay)
    codes = [w.wait() for w in workers]
    return max(codes, key=abs)


def _serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    # A stop asked for while the server is still starting (imports, ingest, warm-up) is kept and
    # honoured once it runs, instead of killing the process mid-start.
    early_stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: early_stop.set())

    import uvloop

    from heliostat.app import Heliostat
    from heliostat.server.main import serve
    from heliostat.subscriptions.drivers import DriverSettings
    from heliostat.subscriptions.lifecycle import RetryPolicy

    n = args.processes or profile(args.profile).processes
    if n > 1:
        if args.watch:
            # Every worker caches tiles; one watcher could not make the others forget theirs.
            print("heliostat: --watch needs --processes 1", file=sys.stderr)
            return 2
        return _serve_processes(args, n)
    archive = Path(args.archive).resolve()
    prof = profile(args.profile)
    app = Heliostat(
        archive,
        profile=prof,
        catalog_path=Path(args.catalog) if args.catalog else None,
        delivery=DriverSettings(
            action_workers=prof.delivery_workers,
            lease_s=args.delivery_lease,
            retention_s=args.delivery_retention,
            dead_letter_retention_s=args.dead_letter_retention,
            retry=RetryPolicy(base_s=args.retry_base, horizon_s=args.retry_horizon),
        ),
        pool_root=Path(args.pool_root).resolve() if args.pool_root else None,
        distribution_root=Path(args.distribution_root).resolve()
        if args.distribution_root
        else None,
        email=_email_settings(args),
    )
    # Built before the initial ingest, so that a missing incoming folder fails fast.
    watcher = app.watch(Path(args.watch), rescan_s=args.rescan) if args.watch else None
    if args.ingest:
        report = app.ingest([str(archive)])
        print(
            f"heliostat: indexed {report.indexed}, unchanged {report.unchanged}, "
            f"rejected {len(report.rejected)}",
            flush=True,
        )
        for path, reason in report.rejected:
            print(f"rejected {path}: {reason}", file=sys.stderr)
    uvloop.run(
        serve(
            app,
            host=args.host,
            port=args.grpc_port,
            reuse_port=args.reuse_port,
            watcher=watcher,
            early_stop=early_stop,
        )
    )
    return 0


def _demo_archive(args: argparse.Namespace) -> int:
    from heliostat.archive import times
    from heliostat.demo import build_demo_archive

    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    files = build_demo_archive(
        dest,
        sample_dir=Path(args.samples),
        start_us=times.parse(args.start),
        hours=args.hours,
        cadence_s=args.cadence,
        workers=args.workers,
    )
    print(f"demo archive: {len(files)} files in {dest}")
    return 0


def _jp2gen(args: argparse.Namespace) -> int:
    from heliostat.jp2gen import convert_many, iter_fits

    files = list(iter_fits(Path(p) for p in args.paths))
    if not files:
        print("heliostat: no FITS files found", file=sys.stderr)
        return 2
    report = convert_many(
        files,
        Path(args.archive),
        workers=args.workers,
        quarantine=Path(args.quarantine) if args.quarantine else None,
        progress=not args.quiet,
        lossless=args.lossless,
        overwrite=args.overwrite,
    )
    for f in report.failed:
        where = f" (moved to {f.quarantined})" if f.quarantined else ""
        print(f"failed {f.path}{where}: {f.reason}", file=sys.stderr)
    print(
        f"converted {len(report.converted)}, skipped {len(report.skipped)}, "
        f"failed {len(report.failed)} in {report.seconds:.1f} s"
    )
    return 1 if report.failed else 0


_DELIVERY_OPTIONS = (
    ("--pool-root", str, None, "data-pool folders (default ARCHIVE/.heliostat/pool)"),
    ("--distribution-root", str, None,
     "distribution destinations (default ARCHIVE/.heliostat/distribution)"),
    ("--delivery-lease", float, 60.0, "seconds a delivery worker holds an action"),
    ("--retry-base", float, 5.0, "first retry delay, seconds (doubling, jittered)"),
    ("--retry-horizon", float, 3 * 86400.0, "seconds of retries before a dead letter"),
    ("--delivery-retention", float, 7 * 86400.0, "seconds finished actions are kept"),
    ("--dead-letter-retention", float, 30 * 86400.0, "seconds dead letters are kept (0: for ever)"),
    ("--smtp-host", str, "localhost", "mail server for e-mail actions"),
    ("--smtp-port", int, 25, "its port"),
    ("--smtp-security", str, "none", "none, starttls or tls"),
    ("--smtp-user", str, None, "log in as this user (password from $HELIOSTAT_SMTP_PASSWORD)"),
    ("--mail-from", str, "heliostat@localhost", "sender of notification mails"),
)  # fmt: skip


def _delivery_options(p: argparse.ArgumentParser) -> None:
    for flag, kind, default, text in _DELIVERY_OPTIONS:
        p.add_argument(flag, type=kind, default=default, help=text)


def _delivery_args(args: argparse.Namespace) -> list[str]:
    """The delivery options given, as arguments for a worker process."""
    out = []
    for flag, _, default, _ in _DELIVERY_OPTIONS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value != default:
            out += [flag, str(value)]
    return out


def _email_settings(args: argparse.Namespace) -> EmailSettings:
    from heliostat.subscriptions.channels.email import SECURITIES, EmailSettings

    if args.smtp_security not in SECURITIES:
        raise SystemExit(f"heliostat: --smtp-security must be one of {', '.join(SECURITIES)}")
    # The password comes from the environment, never the command line (ps shows that).
    return EmailSettings(
        host=args.smtp_host,
        port=args.smtp_port,
        security=args.smtp_security,
        username=args.smtp_user,
        password=os.environ.get("HELIOSTAT_SMTP_PASSWORD") if args.smtp_user else None,
        sender=args.mail_from,
    )


def _watch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--watch",
        metavar="DIR",
        help="move JP2 files dropped into DIR into the archive and index them, and keep the "
        "catalog in line with the archive tree (until SIGTERM or SIGINT)",
    )
    p.add_argument(
        "--rescan",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="with --watch: seconds between rescans of the archive tree (default 5)",
    )


def _watch(args: argparse.Namespace, archive: Path, catalog: Catalog) -> int:
    """Run the watcher in this thread until SIGTERM or SIGINT."""
    import logging
    import signal
    import threading

    from heliostat.archive.ingest import IngestStats
    from heliostat.archive.watch import Watcher

    stats = IngestStats()
    watcher = Watcher(catalog, archive, Path(args.watch), stats=stats, rescan_s=args.rescan)
    if not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    print(f"heliostat: watching {watcher.incoming} for {archive}", flush=True)
    watcher.run(stop)
    c = stats.snapshot()
    print(
        f"seen {c.seen}, converted {c.converted}, indexed {c.indexed}, rejected {c.rejected}, "
        f"deleted {c.deleted}"
    )
    return 0


def _token(args: argparse.Namespace) -> int:
    from heliostat.archive import times
    from heliostat.subscriptions import auth
    from heliostat.subscriptions.store import SubscriptionStore

    archive = Path(args.archive).resolve()
    if not archive.is_dir():
        raise FileNotFoundError(f"archive folder {archive} does not exist")
    # Safe while a server runs: LMDB lets processes share the environment.
    with SubscriptionStore(archive / ".heliostat" / "subscriptions") as store:
        if args.action == "create":
            print(auth.create_token(store, args.owner, operator=args.operator))
        elif args.action == "revoke":
            token_id = auth.token_id(args.token) or args.token
            if not store.remove_token(token_id):
                print(f"heliostat: no token {token_id}", file=sys.stderr)
                return 1
        else:
            for t in store.tokens():
                role = "operator" if t.operator else "owner"
                print(f"{t.token_id}\t{t.owner}\t{role}\t{times.iso(t.created_us)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="heliostat", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve an archive over gRPC")
    s.add_argument("--archive", required=True, help="archive root folder")
    s.add_argument("--catalog", help="LMDB catalog folder (default ARCHIVE/.heliostat/catalog)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--grpc-port", type=int, default=50051)
    s.add_argument("--profile", choices=sorted(PROFILES), default="small")
    s.add_argument("--ingest", action="store_true", help="index the archive before serving")
    s.add_argument("--processes", type=int, default=0, help="server processes (default: profile)")
    s.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    _watch_options(s)
    _delivery_options(s)
    s.set_defaults(func=_serve)

    i = sub.add_parser("ingest", help="index JP2 files and folders into the catalog")
    i.add_argument("paths", nargs="*", help="files or folders inside the archive (default: all)")
    i.add_argument("--archive", required=True, help="archive root folder")
    i.add_argument("--catalog", help="LMDB catalog folder (default ARCHIVE/.heliostat/catalog)")
    i.add_argument("--profile", choices=sorted(PROFILES), default="small")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    _watch_options(i)
    i.set_defaults(func=_ingest)

    d = sub.add_parser("demo-archive", help="build a demo archive of real and generated images")
    d.add_argument("dest", help="archive folder to fill")
    d.add_argument("--samples", required=True, help="folder of real Helioviewer JP2 files")
    d.add_argument(
        "--start",
        default="2014-02-03T04:00:00Z",
        help="first generated frame (default: after the real AIA samples, so series do not mix)",
    )
    d.add_argument("--hours", type=float, default=3.0)
    d.add_argument("--cadence", type=int, default=900, help="seconds between generated frames")
    d.add_argument("--workers", type=int, default=2)
    d.set_defaults(func=_demo_archive)

    j = sub.add_parser("jp2gen", help="convert FITS files into Helioviewer JP2 files")
    j.add_argument("paths", nargs="+", metavar="FITS_OR_DIR", help="FITS files or folders")
    j.add_argument("--archive", required=True, help="archive root the JP2 files go into")
    j.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    j.add_argument("--lossless", action="store_true", help="reversible 5/3 wavelet, exact bytes")
    j.add_argument("--quarantine", help="folder that bad FITS files are moved into")
    j.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    j.add_argument("--quiet", action="store_true", help="no progress bar")
    j.set_defaults(func=_jp2gen)

    t = sub.add_parser("token", help="issue, revoke and list subscription-service tokens")
    tsub = t.add_subparsers(dest="action", required=True)
    tc = tsub.add_parser("create", help="issue a token (printed once, stored only hashed)")
    tc.add_argument("--owner", required=True, help="the owner its subscriptions belong to")
    tc.add_argument("--operator", action="store_true", help="may see and change all")
    tr = tsub.add_parser("revoke", help="revoke a token")
    tr.add_argument("token", help="the token or its id (from `token list`)")
    tl = tsub.add_parser("list", help="token ids, owners and roles")
    for q in (tc, tr, tl):
        q.add_argument("--archive", required=True, help="archive root folder")
        q.set_defaults(func=_token)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError) as e:
        print(f"heliostat: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
