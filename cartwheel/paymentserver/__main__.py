"""``python -m cartwheel.paymentserver``: the Stripe stand-in in front of a running localstripe."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from cartwheel.paymentserver.app import make_app
from cartwheel.paymentserver.checkoutroutes import MIN_SESSION_SECONDS
from cartwheel.paymentserver.sessionparams import DAY


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cartwheel.paymentserver",
                                     description="The Stripe stand-in in front of localstripe.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="localstripe's base URL, http://127.0.0.1:PORT")
    parser.add_argument("--state", type=Path, help="a JSON file to keep the stand-in's state in (default: memory)")
    parser.add_argument("--rate-limit", type=float, help="API requests a second above which it answers 429")
    parser.add_argument("--min-session-seconds", type=int, default=MIN_SESSION_SECONDS,
                        help="the least time ahead a Checkout Session's expires_at may be (Stripe's: 1800; less for "
                             "tests)")
    args = parser.parse_args(argv)
    if args.rate_limit is not None and args.rate_limit <= 0:
        parser.error("--rate-limit must be above 0")
    if not 0 <= args.min_session_seconds <= DAY:
        parser.error(f"--min-session-seconds must be between 0 and {DAY}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    limit = f"{args.rate_limit:g} requests/s" if args.rate_limit else "off"
    logging.getLogger(__name__).info("Stripe stand-in on http://%s:%d in front of localstripe at %s (state: %s; "
                                     "rate limit: %s; Checkout Sessions at least %d s ahead)", args.host, args.port,
                                     args.upstream, args.state or "memory", limit, args.min_session_seconds)
    app = make_app(args.upstream, args.state, args.rate_limit, args.min_session_seconds)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
