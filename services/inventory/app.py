"""Wires the inventory service. Its features arrive in later issues; today it migrates, connects and answers health."""

from __future__ import annotations

from cartwheel.service import Service
from cartwheel.settings import Settings


def build(settings: Settings) -> Service:
    return Service("inventory", settings)
