from cartwheel.db import run_migrations
from cartwheel.tenants.models import Base

run_migrations(Base.metadata)
