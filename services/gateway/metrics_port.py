"""``python -m services.gateway.metrics_port``: every gateway worker's metrics on the metrics port.

Started by the gunicorn master once it is ready (server.py), as a process of its own: a thread in the master
would be copied, half-way through whatever it holds, into every worker the master forks. It reads the
workers' files in ``PROMETHEUS_MULTIPROC_DIR`` at each scrape and dies with the master.
"""

from __future__ import annotations

import signal
import sys

from prometheus_client import CollectorRegistry, multiprocess

from cartwheel.observability import start_ops_server
from cartwheel.settings import get_settings


def main() -> int:
    settings = get_settings()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    server = start_ops_server(settings.metrics_port, registry, lambda: True, settings.metrics_host)
    if server is None:
        return 1
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.pause()  # the server runs in its thread until SIGTERM (the master going sends it: natsserver.spawn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
