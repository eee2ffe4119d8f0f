"""``cartwheel up | run SERVICE | migrate | tenants | seed | health | nats-auth | admin-token | demo-checkout``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cartwheel import subjects
from cartwheel.files import PRIVATE_UMASK
from cartwheel.interrupts import INTERRUPTED
from cartwheel.settings import DATABASES, SERVICES, get_settings
from cartwheel.tenants import cli as tenant_commands

RUNNABLE = (*SERVICES, "gateway")
LANE_SERVICES = tuple(subjects.SERVICE_LANES)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cartwheel", description="Run and operate a Cartwheel shop.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="start NATS, every service and the gateway on this machine (Ctrl-C stops all)")
    up.add_argument("--cluster", action="store_true",
                    help="three nats-servers as one JetStream cluster on loopback; streams and buckets at 3 replicas")
    up.add_argument("--scale", default="", metavar="SERVICE=N[,...]",
                    help="replicas of services, e.g. inventory=3,cart=2 (one each by default)")
    up.add_argument("--postgres", metavar="URL",
                    help="put every database on this PostgreSQL server (cartwheel_<service>, made if missing)")
    run = sub.add_parser("run", help="run one service in the foreground (what containers do)")
    run.add_argument("service", choices=RUNNABLE)
    migrate = sub.add_parser("migrate", help="apply database migrations (all services and the gateway unless named)")
    migrate.add_argument("services", nargs="*", metavar="SERVICE")
    migrate.add_argument("--streams", action="store_true",
                         help="also declare NATS streams and buckets and bring them up to date (as admin)")
    tenant_commands.add_migrate_options(migrate)
    tenant_commands.add_parsers(sub)
    sub.add_parser("seed", help="add the demo catalog (skips products whose sku exists)")
    health = sub.add_parser("health", help="ask services over NATS whether they are healthy; exit 1 if not")
    health.add_argument(
        "--local",
        action="store_true",
        help="ask this machine's instance on its metrics port instead of any replica (container health checks)",
    )
    health.add_argument("services", nargs="*", metavar="SERVICE")
    auth = sub.add_parser(
        "nats-auth",
        help="make each process's NATS key (where missing) and write the server's authorization block (auth.conf)",
    )
    auth.add_argument("--keys", type=Path, help="folder of the <identity>.nk seeds and auth.conf (var/nats-keys)")
    auth.add_argument("--rotate", nargs="*", metavar="IDENTITY",
                      help="replace these identities' keys (all with no name given after --rotate)")
    letters = sub.add_parser(
        "dead-letters", help="list a lane service's dead letters (commands its database would not take); --replay one"
    )
    letters.add_argument("service", choices=LANE_SERVICES)
    letters.add_argument("--replay", metavar="COMMAND_ID",
                         help="send that command again, under a new id (once its cause is fixed), and forget it")
    letters.add_argument("--tenant", help="a tenant's dead letters (each tenant's are in its own database)")
    rebase = sub.add_parser(
        "lanes-rebase", help="after a lane's stream lost its commands: partitions past its end read it from its start"
    )
    rebase.add_argument("service", choices=LANE_SERVICES)
    sub.add_parser("admin-token", help="print the admin token (from CARTWHEEL_ADMIN_TOKEN, else var/secrets.json)")
    demo = sub.add_parser("demo-checkout", help="buy one product on the running shop, pay with a test card, follow it")
    demo.add_argument("--url", help="the shop's address (default: this machine's gateway)")
    demo.add_argument("--card", default="pm_card_visa", help="Stripe test payment method (default pm_card_visa)")
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    allowed = {"migrate": DATABASES, "health": RUNNABLE}.get(args.command, ())
    for name in getattr(args, "services", []):
        if name not in allowed:
            parser.error(f"unknown service {name!r} (choose from {', '.join(allowed)})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback (a long command that can stop cleanly says more)
        print(f"cartwheel {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    os.umask(PRIVATE_UMASK)  # what this process and its children write (var/, databases) is the owner's alone
    settings = get_settings()
    if args.command == "up":
        from cartwheel.supervisor import parse_scale, up

        try:
            scale = parse_scale(args.scale)
        except ValueError as exc:
            build_parser().error(f"--scale {exc}")
        return up(settings, cluster=args.cluster, scale=scale, postgres=args.postgres)
    if args.command == "run":
        if args.service == "gateway":
            from services.gateway.server import serve

            return serve(settings)
        from cartwheel.service import main as run_service

        return run_service(args.service)
    if args.command == "tenants":
        return tenant_commands.run(args, settings)
    if args.command == "migrate" and args.all_tenants:
        return tenant_commands.migrate_all(args, settings)
    if args.command == "migrate":
        from cartwheel.db import migrate

        for service in args.services or DATABASES:
            migrate(service, settings.database_url(service))
            print(f"{service}: migrated")
        if args.streams:
            import asyncio

            from cartwheel.bus import declare_streams

            asyncio.run(declare_streams(settings))
            print("streams and buckets: declared")
        return 0
    if args.command == "seed":
        from services.catalog.seed import seed_demo

        created = seed_demo(settings)
        print(f"seed: {created} products created")
        return 0
    if args.command == "health":
        from cartwheel.health import check_local, check_services

        names = args.services or list(RUNNABLE)
        healthy = check_local(settings, names) if args.local else check_services(settings, names)
        return 0 if healthy else 1
    if args.command == "nats-auth":
        return nats_auth(args.keys or settings.var_dir / "nats-keys", args.rotate)
    if args.command == "dead-letters":
        from cartwheel.lanes.admin import show_dead_letters

        return show_dead_letters(settings, args.service, args.replay, args.tenant)
    if args.command == "lanes-rebase":
        from cartwheel.lanes.admin import rebase

        return rebase(settings, args.service)
    if args.command == "admin-token":
        token = settings.with_secrets().admin_token
        print(token.get_secret_value() if token else "")
        return 0
    if args.command == "demo-checkout":
        from cartwheel.demo import DemoFailed, demo_checkout

        host = "127.0.0.1" if settings.gateway_host in ("", "0.0.0.0", "::") else settings.gateway_host
        url = args.url or f"http://{host}:{settings.gateway_port}"
        try:
            demo_checkout(url, args.card)
        except DemoFailed as failure:
            print(f"demo-checkout: {failure}", file=sys.stderr)
            return 1
        return 0
    return 2


def nats_auth(folder: Path, rotate: list[str] | None) -> int:
    """``cartwheel nats-auth``: seeds in ``folder`` (new ones for ``rotate``; ``[]`` rotates all) and auth.conf."""
    from cartwheel import natsauth

    unknown = sorted(set(rotate or ()) - set(natsauth.IDENTITIES))
    if unknown:
        print(f"nats-auth: unknown identity {', '.join(unknown)} (choose from {', '.join(natsauth.IDENTITIES)})",
              file=sys.stderr)
        return 2
    for identity in natsauth.IDENTITIES if rotate == [] else rotate or ():
        (folder / f"{identity}.nk").unlink(missing_ok=True)
    seeds = natsauth.ensure_keys(folder)
    conf = natsauth.write_authorization(folder, seeds)
    print(f"nats-auth: {len(seeds)} keys in {folder}; the server's users and permissions in {conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
