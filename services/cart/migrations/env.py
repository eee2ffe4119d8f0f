from cartwheel.db import PlatformBase, run_migrations

run_migrations(PlatformBase.metadata)
