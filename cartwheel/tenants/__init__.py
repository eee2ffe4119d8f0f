"""Many shops on one installation: the registry of tenants, a database per tenant and service, and migrations
across all of them (see the README's "Many shops on one installation")."""
