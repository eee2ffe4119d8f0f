from cartwheel.db import PlatformBase, run_migrations
from services.notifications.models import Base

run_migrations(Base.metadata, PlatformBase.metadata)
