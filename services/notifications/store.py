"""Notifications queries; each takes the caller's Session."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cartwheel.contracts.base import utcnow
from cartwheel.contracts.notifications import CaughtMail, SentMail
from services.notifications.mails import Mail
from services.notifications.models import CaughtMailRow, MailRow, UnsubscribedRow

Claim = Literal["mine", "done", "busy"]


def claim(session: Session, mail: Mail, order_id: str, hold: timedelta) -> Claim:
    """Take ``mail`` to send for at most ``hold`` (its row is made now if it has none): ``mine``; or ``done``
    (sent, or refused for good, before); or ``busy`` (another worker sends it now). Two workers that make the
    row at once: one commit fails on its key, and that worker is ``busy`` next time."""
    now = utcnow()
    row = session.get(MailRow, mail.mail_id, with_for_update=True)
    if row is None:
        session.add(MailRow(id=mail.mail_id, kind=mail.kind, order_id=order_id, to=mail.to, subject=mail.subject,
                            status="sending", attempts=0, created_at=now, claimed_until=now + hold))
        return "mine"
    if row.status != "sending":
        return "done"
    if row.claimed_until is not None and row.claimed_until > now:
        return "busy"
    row.claimed_until = now + hold
    return "mine"


def attempted(session: Session, mail_id: str, status: str, error: str | None = None) -> SentMail:
    """Record one attempt at ``mail_id`` and how it ended: ``sent``, ``failed`` (for good) or ``sending`` (again
    later)."""
    row = session.get(MailRow, mail_id)
    assert row is not None, mail_id
    row.attempts += 1
    row.status, row.error, row.claimed_until = status, error, None
    if status == "sent":
        row.sent_at = utcnow()
    return sent_view(row)


def sent_view(row: MailRow) -> SentMail:
    return SentMail(mail_id=row.id, kind=row.kind, order_id=row.order_id, to=row.to,  # type: ignore[arg-type]
                    subject=row.subject, status=row.status, attempts=row.attempts,  # type: ignore[arg-type]
                    error=row.error, created_at=row.created_at, sent_at=row.sent_at)


def of_order(session: Session, order_id: str) -> list[SentMail]:
    rows = session.scalars(select(MailRow).where(MailRow.order_id == order_id).order_by(MailRow.created_at))
    return [sent_view(row) for row in rows]


def one(session: Session, mail_id: str) -> MailRow | None:
    return session.get(MailRow, mail_id)


def keep_caught(session: Session, mail: dict[str, Any], keep: int, received_at: datetime | None = None) -> int:
    """Store a caught mail; the shop's oldest beyond its newest ``keep`` go (a busy shop never pushes another's
    out). Its id."""
    row = CaughtMailRow(**mail, received_at=received_at or utcnow())
    session.add(row)
    session.flush()
    newest = (select(CaughtMailRow.id).where(CaughtMailRow.tenant == row.tenant).order_by(CaughtMailRow.id.desc())
              .offset(keep).limit(1).scalar_subquery())
    session.execute(delete(CaughtMailRow).where(CaughtMailRow.tenant == row.tenant, CaughtMailRow.id <= newest))
    return row.id


def forget_caught(session: Session, tenant: str) -> int:
    """Every mail caught for ``tenant`` (a deleted shop's); how many."""
    return session.execute(delete(CaughtMailRow).where(CaughtMailRow.tenant == tenant)).rowcount


def caught(session: Session, tenant: str, limit: int, to: str | None = None) -> list[CaughtMail]:
    """``tenant``'s newest caught mails first (``to``: only those to that address)."""
    query = select(CaughtMailRow).where(CaughtMailRow.tenant == tenant).order_by(CaughtMailRow.id.desc())
    if to is not None:
        query = query.where(CaughtMailRow.recipients.contains(json.dumps(to), autoescape=True))
    rows = session.scalars(query.limit(limit))
    return [CaughtMail(mail_id=r.id, to=json.loads(r.recipients), sender=r.sender, subject=r.subject, text=r.text,
                       html=r.html, received_at=r.received_at) for r in rows]


def unsubscribe(session: Session, email: str) -> None:
    if session.get(UnsubscribedRow, email.lower()) is None:
        session.add(UnsubscribedRow(email=email.lower(), at=utcnow()))


def unsubscribed(session: Session, email: str) -> bool:
    return session.get(UnsubscribedRow, email.lower()) is not None


def forget_tenants_caught_mails(url: str, tenant: str) -> int:
    """``cartwheel tenants delete``: a deleted shop's caught mails, from the database at ``url`` (the
    installation's own notifications database; nothing when it was never made)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError, ProgrammingError

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not (parsed.database and Path(parsed.database).exists()):
        return 0
    engine = create_engine(url)
    try:
        with Session(engine) as session, session.begin():
            return forget_caught(session, tenant)
    except (OperationalError, ProgrammingError):  # not migrated yet: it caught nothing
        return 0
    finally:
        engine.dispose()
