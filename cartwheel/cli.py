"""``cartwheel up | run SERVICE | migrate | seed | health``."""

from __future__ import annotations

import argparse
import sys

from cartwheel.settings import SERVICES, get_settings

RUNNABLE = (*SERVICES, "gateway")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cartwheel", description="Run and operate a Cartwheel shop.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("up", help="start NATS, every service and the gateway on this machine (Ctrl-C stops all)")
    run = sub.add_parser("run", help="run one service in the foreground (what containers do)")
    run.add_argument("service", choices=RUNNABLE)
    migrate = sub.add_parser("migrate", help="apply database migrations (all services unless named)")
    migrate.add_argument("services", nargs="*", choices=[[], *SERVICES], metavar="SERVICE")
    sub.add_parser("seed", help="add the demo catalog (skips products whose sku exists)")
    health = sub.add_parser("health", help="ask services over NATS whether they are healthy; exit 1 if not")
    health.add_argument("services", nargs="*", choices=[[], *RUNNABLE], metavar="SERVICE")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    if args.command == "up":
        from cartwheel.supervisor import up

        return up(settings)
    if args.command == "run":
        if args.service == "gateway":
            from services.gateway.server import serve

            return serve(settings)
        from cartwheel.service import main as run_service

        return run_service(args.service)
    if args.command == "migrate":
        from cartwheel.db import migrate

        for service in args.services or SERVICES:
            migrate(service, settings.database_url(service))
            print(f"{service}: migrated")
        return 0
    if args.command == "seed":
        from services.catalog.seed import seed_demo

        created = seed_demo(settings)
        print(f"seed: {created} products created")
        return 0
    if args.command == "health":
        from cartwheel.health import check_services

        return 0 if check_services(settings, args.services or list(RUNNABLE)) else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
