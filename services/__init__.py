"""Cartwheel services, one package each."""
