"""``cartwheel tenants create|list|disable|enable|delete`` and ``cartwheel migrate --all-tenants``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

import nats.errors

from cartwheel.db import drop_database
from cartwheel.interrupts import INTERRUPTED
from cartwheel.settings import DATABASES, Settings
from cartwheel.tenants import migrate
from cartwheel.tenants.erase import erase_messages
from cartwheel.tenants.mirror import sync_now
from cartwheel.tenants.names import BadName
from cartwheel.tenants.registry import HostTaken, NoSuchTenant, Registry, TenantExists

LET_GO_WAIT_S = 3.0
"""How long delete waits, after telling the shop, for every process to let go of the tenant's databases (they
look every second: cartwheel/service.py LET_GO_EVERY_S)."""


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    tenants = sub.add_parser("tenants", help="many shops on one installation: register, list, disable, delete")
    verbs = tenants.add_subparsers(dest="verb", required=True, metavar="VERB")
    create = verbs.add_parser("create", help="register a tenant (or many, --file) and make and migrate its databases")
    create.add_argument("name", nargs="?", help="2-40 lower-case letters, digits and hyphens")
    create.add_argument("--host", action="append", default=[], help="a host it serves (repeat for more)")
    create.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a tenant setting: currency=EUR, locale=de_DE, stripe_publishable_key=pk_...")
    create.add_argument("--file", type=Path, help="many tenants: one per line, 'NAME HOST [HOST ...]'")
    create.add_argument("--parallel", type=int, default=os.cpu_count() or 2, help="databases migrated at once")
    listing = verbs.add_parser("list", help="every tenant, its status and hosts")
    listing.add_argument("--json", action="store_true")
    for verb, text in (("disable", "stop serving a tenant (its hosts answer 404; its data stays)"),
                       ("enable", "serve a disabled tenant again")):
        verbs.add_parser(verb, help=text).add_argument("name")
    settings = verbs.add_parser("set", help="change a tenant's settings (KEY= removes one)")
    settings.add_argument("name")
    settings.add_argument("pairs", nargs="+", metavar="KEY=VALUE",
                          help="currency=USD, locale=en_US, stripe_publishable_key=pk_...")
    stripe = verbs.add_parser("stripe", help="give a tenant its own Stripe account (kept in its own payments database)")
    stripe.add_argument("name")
    stripe.add_argument("--secret-key-file", type=Path, help="a file holding the account's secret key (sk_...)")
    stripe.add_argument("--webhook-secret-file", type=Path, help="a file holding its webhook signing secret")
    stripe.add_argument("--remove", action="store_true", help="back to the installation's Stripe account")
    export = verbs.add_parser("export", help="one tenant's data as a tarball (its databases and its registry entry)")
    export.add_argument("name")
    export.add_argument("--out", type=Path, help="the tarball (default: ./<name>-<UTC time>.tar.gz)")
    delete = verbs.add_parser("delete", help="remove a tenant and every byte of its data (no undo)")
    delete.add_argument("name")
    delete.add_argument("--yes", action="store_true", help="really: without it nothing is deleted")


def add_migrate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all-tenants", action="store_true",
                        help="every tenant's databases (the journal in the control database skips what is done)")
    parser.add_argument("--parallel", type=int, default=os.cpu_count() or 2, help="databases migrated at once")
    parser.add_argument("--dry-run", action="store_true", help="say what would be migrated; change nothing")


def registry_of(settings: Settings) -> Registry:
    return Registry(settings.control_url, reserved=[settings.tenant])


def run(args: argparse.Namespace, settings: Settings) -> int:
    registry = registry_of(settings)
    try:
        return _VERBS[args.verb](args, settings, registry)
    except (BadName, TenantExists, HostTaken, NoSuchTenant) as exc:
        print(f"tenants {args.verb}: {exc}", file=sys.stderr)
        return 2
    finally:
        registry.close()


def migrate_all(args: argparse.Namespace, settings: Settings) -> int:
    registry = registry_of(settings)
    try:
        plan = migrate.plan(settings, registry, services=args.services or DATABASES)
        return _migrate(plan, registry, args.parallel, dry_run=args.dry_run)
    finally:
        registry.close()


def _migrate(plan: migrate.Plan, registry: Registry, parallel: int, *, dry_run: bool = False) -> int:
    tenants = len({job.tenant for job in plan.todo})
    print(f"{len(plan.todo)} tenant databases to migrate ({tenants} tenants; {plan.retrying} failed before), "
          f"{plan.done} already done", flush=True)  # before the progress, which goes to stderr
    if not plan.todo:
        return 0
    if dry_run:
        for job in plan.todo:
            print(f"  would migrate {job.tenant} {job.service} to {job.revision}")
        return 0
    outcome = migrate.run(registry, plan.todo, parallel=max(1, parallel))
    print(migrate.summary(outcome, plan.done))
    return INTERRUPTED if outcome.interrupted else 1 if outcome.failures else 0


def _create(args: argparse.Namespace, settings: Settings, registry: Registry) -> int:
    if args.file:
        wanted = [(parts[0], parts[1:], {}) for parts in _lines(args.file)]
    elif args.name:
        pairs = dict(item.partition("=")[::2] for item in args.set)
        wanted = [(args.name, args.host, pairs)]
    else:
        raise BadName("name a tenant, or give --file")
    made = registry.create_many(wanted)
    for tenant, token in made if not args.file else ():
        print(f"tenant {tenant.name} registered, serving {', '.join(tenant.hosts) or 'no host yet'}")
        print(f"its admin token (shown once; only its hash is kept): {token}")
    if args.file:
        tokens = args.file.with_suffix(".tokens")
        tokens.write_text("".join(f"{tenant.name} {token}\n" for tenant, token in made))
        tokens.chmod(0o600)
        print(f"{len(made)} tenants registered; their admin tokens are in {tokens} (only hashes are kept here)")
    plan = migrate.plan(settings, registry, tenants=[tenant.name for tenant, _ in made])
    failed = _migrate(plan, registry, args.parallel)
    _tell_the_shop(settings, registry)
    return failed


def _list(args: argparse.Namespace, settings: Settings, registry: Registry) -> int:
    tenants = registry.list()
    if args.json:
        print(json.dumps([t.public() | {"created_at": t.created_at.isoformat()} for t in tenants], indent=2))
        return 0
    print(f"{settings.tenant} (the installation's own): serves {settings.default_tenant_hosts}")
    for t in tenants:
        print(f"{t.name}  {t.status}  {', '.join(t.hosts) or '-'}  {json.dumps(t.settings) if t.settings else ''}")
    print(f"{len(tenants)} tenants registered")
    return 0


def _status(args: argparse.Namespace, settings: Settings, registry: Registry) -> int:
    if registry.get(args.name).status == "deleting":
        raise NoSuchTenant(f"tenant {args.name!r} is being deleted: run `cartwheel tenants delete {args.name} --yes` "
                           "again to finish")
    tenant = registry.set_status(args.name, "disabled" if args.verb == "disable" else "active")
    print(f"tenant {tenant.name} is {tenant.status}")
    _tell_the_shop(settings, registry)
    return 0


def _delete(args: argparse.Namespace, settings: Settings, registry: Registry) -> int:
    tenant = registry.get(args.name)
    if not args.yes:
        print(f"tenants delete: this removes {tenant.name} and all of its data; add --yes to do it", file=sys.stderr)
        return 2
    registry.set_status(tenant.name, "deleting")  # its hosts 404; every process lets go of its databases ...
    if _tell_the_shop(settings, registry):
        time.sleep(LET_GO_WAIT_S)  # ... within a second of hearing it
    for service in DATABASES:
        drop_database(settings.database_url(service, tenant.name))
    from services.notifications.store import forget_tenants_caught_mails  # kept in the installation's database

    forget_tenants_caught_mails(settings.database_url("notifications"), tenant.name)
    folder = settings.var_dir / "tenants" / tenant.name
    shutil.rmtree(folder, ignore_errors=True)
    print(f"tenant {tenant.name}: its databases and files are deleted; erasing its messages from NATS…")
    try:
        erased = asyncio.run(erase_messages(settings, tenant.name))
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        print(f"tenants delete: NATS could not be reached ({type(exc).__name__}: {exc}); {tenant.name} stays "
              "registered (being deleted) until its messages are erased: run the same command again",
              file=sys.stderr)
        return 1
    registry.forget(tenant.name)
    _tell_the_shop(settings, registry)
    told = ", ".join(f"{n} in {where}" if n >= 0 else f"purged {where}" for where, n in erased.items())
    print(f"tenant {tenant.name} deleted: its databases, its files, its messages and objects in NATS ({told}) "
          "and its registry entry")
    return 0


def _set(args: argparse.Namespace, settings: Settings, registry: Registry) -> int:
    tenant = registry.set_settings(args.name, dict(pair.partition("=")[::2] for pair in args.pairs))
    print(f"tenant {tenant.name}: {json.dumps(tenant.settings)}")
    _tell_the_shop(settings, registry)
    return 0


def _stripe(args: argparse.Namespace, settings: Settings, registry: Registry) -> int:
    from services.payments.accounts import remove_own_account, set_own_account

    registry.get(args.name)
    url = settings.database_url("payments", args.name)
    if args.remove:
        remove_own_account(url)
        print(f"tenant {args.name} is paid into the installation's Stripe account again")
        return 0
    if args.secret_key_file is None:
        raise BadName("give --secret-key-file (a file, so the key is never on a command line) or --remove")
    key = args.secret_key_file.read_text().strip()
    hook = args.webhook_secret_file.read_text().strip() if args.webhook_secret_file else None
    try:
        set_own_account(url, key, hook)
    except ValueError as exc:
        raise BadName(str(exc)) from None
    print(f"tenant {args.name} is paid into its own Stripe account (…{key[-4:]}); running payments services use it "
          "within 30 s")
    return 0


def _export(args: argparse.Namespace, settings: Settings, registry: Registry) -> int:
    from datetime import UTC, datetime

    from cartwheel.tenants.export import ExportFailed, export_tenant

    out = args.out or Path(f"{args.name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.tar.gz")
    try:
        manifest = export_tenant(settings, registry, args.name, out)
    except ExportFailed as exc:
        print(f"tenants export: {exc}", file=sys.stderr)
        return 1
    size = sum(d["bytes"] for d in manifest["databases"].values())
    print(f"tenant {args.name} exported to {out}: {len(manifest['databases'])} databases, {size} bytes before "
          "compression")
    return 0


def _tell_the_shop(settings: Settings, registry: Registry) -> bool:
    """Copy the registry to the bucket the running shop reads; whether it could."""
    problem = sync_now(settings, registry)
    if problem:
        print(f"(the running shop was not told: {problem}; `cartwheel up` tells it at its next start)")
    return problem is None


def _lines(path: Path) -> list[list[str]]:
    lines = [line.split("#", 1)[0].split() for line in path.read_text().splitlines()]
    return [parts for parts in lines if parts]


_VERBS = {"create": _create, "list": _list, "disable": _status, "enable": _status, "set": _set, "stripe": _stripe,
          "export": _export, "delete": _delete}
