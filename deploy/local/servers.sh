#!/usr/bin/env bash
# Makes sure the local servers the fleet and its tests use are up on loopback, starting any that
# is down: NATS with JetStream (4222), PostgreSQL (5432), Mosquitto (1883).
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {  # name port: bounded wait, 30 s
  for _ in $(seq 1 60); do port_open "$2" && return 0; sleep 0.5; done
  echo "servers: $1 did not come up on 127.0.0.1:$2" >&2; return 1
}

if ! port_open 4222; then
  echo "servers: starting nats-server (JetStream)"
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
  wait_port nats 4222
fi
if ! port_open 5432; then
  echo "servers: starting PostgreSQL"
  cluster_version=$(ls /etc/postgresql | sort -V | tail -n 1)
  pg_ctlcluster --skip-systemctl-redirect "$cluster_version" main start
  wait_port postgresql 5432
fi
if ! port_open 1883; then
  echo "servers: starting mosquitto"
  mosquitto -d -c /etc/mosquitto/mosquitto.conf
  wait_port mosquitto 1883
fi
# Local development relies on trust auth for user postgres over TCP (Debian's default is
# peer/scram); say so clearly instead of failing later with an auth error.
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then
  echo "servers: cannot log in to PostgreSQL as postgres on 127.0.0.1 without a password;" \
       "set POSTGRES_DSN or allow trust auth for 127.0.0.1 in pg_hba.conf" >&2
  exit 1
fi
