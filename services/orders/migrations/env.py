from cartwheel.db import PlatformBase, run_migrations
from services.orders.models import Base

run_migrations(Base.metadata, PlatformBase.metadata)
