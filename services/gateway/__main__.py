"""``python -m services.gateway``: the same as ``cartwheel run gateway``."""

import sys

from cartwheel.settings import get_settings
from services.gateway.server import serve

if __name__ == "__main__":
    sys.exit(serve(get_settings()))
