"""Unique ids for tests, so tests never collide on a shared NATS server or database; real images to upload."""

from __future__ import annotations

import io
import os
import uuid

from PIL import Image


def _suffix() -> str:
    return uuid.uuid4().hex[:12]


def random_sku(prefix: str = "sku") -> str:
    return f"{prefix}-{_suffix()}"


def random_email() -> str:
    return f"shopper-{_suffix()}@example.test"


def random_tenant() -> str:
    return f"tenant-{_suffix()}"


def image(kind: str = "PNG", width: int = 8, height: int = 6, *, noise: bool = False) -> bytes:
    """A real image (PNG, JPEG or WEBP) that decodes whole; ``noise`` makes it as large as its pixels allow."""
    picture = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)) if noise else (
        Image.new("RGB", (width, height), (255, 128, 0))
    )
    out = io.BytesIO()
    picture.save(out, kind, **({"quality": 100} if kind == "JPEG" else {}))
    return out.getvalue()
