from cartwheel.db import PlatformBase, run_migrations
from cartwheel.lanes.models import LanesBase

run_migrations(PlatformBase.metadata, LanesBase.metadata)
