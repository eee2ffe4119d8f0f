"""Mail out over SMTP (aiosmtplib), and the embedded catcher (aiosmtpd) that takes it in when no server is set.

A refusal for good (a 5xx answer: an address the server does not know) is :class:`Refused`: that mail is
marked failed and never tried again. Anything else (no server, a 4xx "try later", a timeout) is
:class:`Unreachable`: the mail is tried again later.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger("cartwheel.notifications.smtp")

SEND_TIMEOUT_S = 20.0  # the whole conversation with the server, connecting included
REFUSED_DOMAIN = ".invalid"
"""The catcher refuses every address at a domain ending so (RFC 2606 reserves it: it can never exist), as a real
server refuses an address it does not know: how a bad address is rehearsed."""


class Refused(Exception):
    """The server refused the mail for good: trying again would not help."""


class Unreachable(Exception):
    """No server took the mail this time (down, busy, a 4xx answer): try again later."""


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False  # smtps: TLS from the first byte; otherwise STARTTLS when the server offers it

    @classmethod
    def from_url(cls, url: str) -> Server:
        """``smtp://user:password@host:587`` or ``smtps://host:465``."""
        parts = urlsplit(url)
        tls = parts.scheme == "smtps"
        return cls(parts.hostname or "localhost", parts.port or (465 if tls else 587),
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None, tls)

    async def send(self, message: EmailMessage) -> None:
        # STARTTLS: required before a password goes out (a server that does not offer it is refused, so no one in
        # between can strip it and read the password); without one, used when the server offers it.
        start_tls = False if self.tls else (True if self.username else None)
        try:
            async with asyncio.timeout(SEND_TIMEOUT_S):
                await aiosmtplib.send(message, hostname=self.host, port=self.port, username=self.username,
                                      password=self.password, use_tls=self.tls, start_tls=start_tls,
                                      timeout=SEND_TIMEOUT_S)
        except aiosmtplib.SMTPNotSupported as exc:  # an address (or extension) this server can never take
            raise Refused(f"{type(exc).__name__}: {exc}") from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [error.code for error in exc.recipients]
            reason = "; ".join(f"{e.recipient}: {e.code} {e.message}" for e in exc.recipients)
            raise (Refused if all(code >= 500 for code in codes) else Unreachable)(reason) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise (Refused if exc.code >= 500 else Unreachable)(f"{exc.code} {exc.message}") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None


Keep = Callable[[dict[str, Any]], Awaitable[None]]


class _Catching:
    """aiosmtpd's handler: refuses ``.invalid`` addresses, hands every mail it takes to ``keep``."""

    def __init__(self, keep: Keep) -> None:
        self.keep = keep

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if address.lower().rstrip(">").endswith(REFUSED_DOMAIN):
            return f"550 5.1.1 <{address}>: no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        parsed = message_from_bytes(raw if isinstance(raw, bytes) else raw.encode(), policy=policy.default)
        text = parsed.get_body(("plain",)) if isinstance(parsed, EmailMessage) else None
        html = parsed.get_body(("html",)) if isinstance(parsed, EmailMessage) else None
        mail = {
            "tenant": str(parsed.get("X-Cartwheel-Tenant", "")),
            "sender": str(parsed.get("From", envelope.mail_from or "")),
            "recipients": json.dumps(list(envelope.rcpt_tos)),
            "subject": str(parsed.get("Subject", "")),
            "text": text.get_content() if text is not None else "",
            "html": html.get_content() if html is not None else None,
        }
        try:
            await self.keep(mail)
        except Exception:
            log.exception("the catcher could not keep a mail")
            return "451 4.3.0 could not store the mail; try again"
        return "250 OK"


class Catcher:
    """An SMTP server on loopback, on this process's event loop, keeping each mail through ``keep``."""

    def __init__(self, keep: Keep, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self._handler = _Catching(keep)
        self._server: asyncio.Server | None = None

    async def start(self) -> Server:
        """Listen; the :class:`Server` to send to."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self._handler, hostname="cartwheel-catcher", enable_SMTPUTF8=True), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("mail catcher on %s:%d (no SMTP server set: mails stay on this machine, see /admin/mail)",
                 self.host, self.port)
        return Server(self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
