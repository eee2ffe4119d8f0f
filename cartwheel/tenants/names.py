"""What a tenant's name and hosts may be: a name goes into file paths, database names and NATS subjects."""

from __future__ import annotations

import re

NAME = re.compile(r"[a-z][a-z0-9-]{0,38}[a-z0-9]")
"""Lower-case letters, digits and inner hyphens, 2 to 40 long: safe as a folder, a database name and a token."""
HOST = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


class BadName(ValueError):
    """A tenant name or host that can't be used, with a message for the person who typed it."""


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise BadName(f"tenant name {name!r}: use 2-40 lower-case letters, digits and inner hyphens, "
                      "starting with a letter (e.g. acme-shop)")
    return name


def normal_host(host: str) -> str:
    """``Shop.Example.com:443`` → ``shop.example.com``: how a request's Host is looked up (no port, lower case)."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("["):  # an IPv6 literal, with or without its port
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def check_host(host: str) -> str:
    normal = host.strip().lower().rstrip(".")
    if not HOST.fullmatch(normal):
        raise BadName(f"host {host!r}: a DNS name such as shop.example.com (no scheme, path or port)")
    return normal
