#!/usr/bin/env bash
# Creates everything the fleet needs on a fresh Debian machine, skipping what is already there:
# OS packages (python venv, nats-server, PostgreSQL, Mosquitto, unixODBC + FreeTDS ODBC driver,
# promtool, Chromium for the console's browser test),
# the virtualenv in .venv, and every library and implemented service installed editable with
# versions from constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
[ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null || need_apt+=(nats-server)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql)
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_pub >/dev/null || need_apt+=(mosquitto-clients)
command -v ss >/dev/null || need_apt+=(iproute2)  # servers.sh: who holds the MQTT port
# writer-sqlserver: unixODBC (pyodbc's libodbc.so.2) and the FreeTDS ODBC driver.
command -v odbcinst >/dev/null || need_apt+=(unixodbc)
ls /usr/lib/*/odbc/libtdsodbc.so >/dev/null 2>&1 || need_apt+=(tdsodbc)
# promtool (Debian's prometheus package) runs the SLO rule tests (tests/deploy); Chromium the
# console's browser test (tests/e2e/test_e2e_console.py, Playwright on the system browser).
command -v promtool >/dev/null || need_apt+=(prometheus)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install: OS packages missing: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

packages=(libs/contracts libs/runtime libs/access libs/ingest libs/sqlserver libs/consumer-kit libs/operator)
for dir in services/*/; do
  # A service is installable once it has its own entry point.
  if ls "$dir"src/*/__main__.py >/dev/null 2>&1; then packages+=("${dir%/}"); fi
done

stamp=.venv/.tributary-installed
want=$( (cat constraints.txt requirements-dev.txt; for p in "${packages[@]}"; do echo "$p"; cat "$p/pyproject.toml"; done) | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
uv_pin=$(grep -E '^uv==' constraints.txt)
.venv/bin/python -m pip install -q --disable-pip-version-check "$uv_pin"
editable=()
for p in "${packages[@]}"; do editable+=(-e "$p"); done
.venv/bin/uv pip install -q -p .venv/bin/python -c constraints.txt -r requirements-dev.txt "${editable[@]}"
echo "$want" > "$stamp"
echo "install: .venv ready (${packages[*]})"
