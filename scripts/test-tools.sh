#!/usr/bin/env bash
# The programs the test suite runs besides Python: Prometheus's promtool, Alertmanager and amtool check
# and fire the alert rules for real; a headless Chromium renders the pages; psql runs the deployment's
# database init script. On Debian/Ubuntu as root
# they are installed from the distribution; elsewhere this stops before the tests with the command to run.
set -euo pipefail

packages="prometheus prometheus-alertmanager chromium postgresql-client"
have() { command -v "$1" >/dev/null 2>&1; }
missing() {
    have promtool || return 0
    have amtool || return 0
    have prometheus || return 0
    { have prometheus-alertmanager || have alertmanager; } || return 0
    { have chromium || have chromium-browser; } || return 0
    have psql || return 0
    return 1
}

missing || exit 0
if [ "$(id -u)" = 0 ] && have apt-get; then
    echo "make test: installing the test tools from the distribution: $packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null
    missing || exit 0
    echo "make test: '$packages' were installed but a program is still missing from PATH" >&2
    exit 1
fi
cat >&2 <<MSG
make test needs promtool, prometheus, alertmanager, amtool, chromium and psql, and cannot install them here.
Install them, then run make test again:
    sudo apt-get install -y $packages
(on other systems: Prometheus and Alertmanager from https://prometheus.io/download/, Chromium, and the PostgreSQL client)
MSG
exit 1
