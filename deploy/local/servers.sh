#!/usr/bin/env bash
# Makes sure the local servers the fleet and its tests use are up on loopback, starting any that
# is down: NATS with JetStream (4222), PostgreSQL (5432), Mosquitto (1883).
# Mosquitto runs the repository's configuration (deploy/mosquitto/mosquitto.conf: authenticated
# clients, ACLs, queue limits) rendered into $TRIBUTARY_MQTT_DIR (default .tributary/mosquitto)
# for port $TRIBUTARY_MQTT_PORT (default 1883); a broker started from another config on that port
# (the OS's /etc/mosquitto/mosquitto.conf) is stopped and replaced, once.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MQTT_PORT=${TRIBUTARY_MQTT_PORT:-1883}
MQTT_DIR=${TRIBUTARY_MQTT_DIR:-$ROOT/.tributary/mosquitto}

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
wait_port_closed() {  # port: bounded wait, 15 s
  for _ in $(seq 1 30); do port_open "$1" || return 0; sleep 0.5; done; return 1
}
# The pid of the broker running on our rendered config (its pid file is the marker), if any.
repo_mosquitto_pid() {
  local pid
  pid=$(cat "$MQTT_DIR/mosquitto.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null \
    | grep -q -- "-c $MQTT_DIR/mosquitto.conf" && echo "$pid"
}
"$ROOT/.venv/bin/tributary" mqtt --dir "$MQTT_DIR" broker-config --port "$MQTT_PORT" >/dev/null
if pid=$(repo_mosquitto_pid); then
  kill -HUP "$pid"  # re-read users, ACLs and limits (listener changes need a restart)
else
  if port_open "$MQTT_PORT"; then
    other=$(ss -Hltnp "sport = :$MQTT_PORT" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2)
    if [ -z "$other" ] || ! grep -q mosquitto "/proc/$other/cmdline" 2>/dev/null; then
      echo "servers: 127.0.0.1:$MQTT_PORT is taken by something that is not mosquitto;" \
           "set TRIBUTARY_MQTT_PORT or free the port" >&2
      exit 1
    fi
    echo "servers: replacing the mosquitto on $MQTT_PORT (pid $other) by the repository's config"
    kill "$other"  # SIGTERM: it saves its persistence file first
    wait_port_closed "$MQTT_PORT" || { echo "servers: mosquitto $other did not stop" >&2; exit 1; }
  fi
  echo "servers: starting mosquitto with deploy/mosquitto/mosquitto.conf on $MQTT_PORT"
  mosquitto -d -c "$MQTT_DIR/mosquitto.conf"
  wait_port mosquitto "$MQTT_PORT"
fi
# Local development relies on trust auth for user postgres over TCP (Debian's default is
# peer/scram); say so clearly instead of failing later with an auth error.
if ! psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then
  echo "servers: cannot log in to PostgreSQL as postgres on 127.0.0.1 without a password;" \
       "set POSTGRES_DSN or allow trust auth for 127.0.0.1 in pg_hba.conf" >&2
  exit 1
fi
