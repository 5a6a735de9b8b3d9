#!/bin/sh
# A stand-in for the official postgres image's first start (POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD), for
# testing docker-compose.yml on a machine that cannot pull from Docker Hub. Debian's PostgreSQL 15.
set -e
PGBIN=/usr/lib/postgresql/15/bin
export PGDATA=/var/lib/postgresql/data
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
  echo "$POSTGRES_PASSWORD" > /tmp/pw && chown postgres /tmp/pw
  su postgres -c "$PGBIN/initdb -D $PGDATA -U $POSTGRES_USER --pwfile=/tmp/pw --auth-host=scram-sha-256 --auth-local=trust --encoding=UTF8 --locale=C.UTF-8"
  rm /tmp/pw
  echo "listen_addresses='*'" >> "$PGDATA/postgresql.conf"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  su postgres -c "$PGBIN/pg_ctl -D $PGDATA -o '-c listen_addresses= -c port=5432' -w start"
  su postgres -c "$PGBIN/psql -h /var/run/postgresql -p 5432 -U $POSTGRES_USER -d postgres -c 'CREATE DATABASE $POSTGRES_DB'"
  su postgres -c "$PGBIN/pg_ctl -D $PGDATA -m fast -w stop"
fi
exec su postgres -c "exec $PGBIN/postgres -D $PGDATA"
