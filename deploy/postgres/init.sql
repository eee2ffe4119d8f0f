-- One database per Cartwheel service (and the gateway's, for accounts): each owns its data and migrations.
-- Run once by the postgres image from /docker-entrypoint-initdb.d on an empty volume,
-- as POSTGRES_USER, who owns the databases. Each service creates its own tables at start.
-- Outside Docker: psql -v ON_ERROR_STOP=1 -U <owner> -d postgres -f deploy/postgres/init.sql
CREATE DATABASE catalog;
CREATE DATABASE cart;
CREATE DATABASE inventory;
CREATE DATABASE orders;
CREATE DATABASE payments;
CREATE DATABASE notifications;
CREATE DATABASE gateway;
