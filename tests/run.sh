#!/usr/bin/env bash
# Runs pibl's whole test suite: the unit and integration tests (which start
# the built binary against real backends on loopback, once per concurrency
# model), then lint of the man pages and the systemd unit.  Installs mandoc,
# groff, systemd-analyze, the HTTPS tests' openssl, curl and sslscan, and
# the status page's jq, promtool and chromium, and (as root) keepalived and
# iproute2 from Debian's packages when they are missing and it runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mandoc >/dev/null || need+=(mandoc)
command -v groff >/dev/null || need+=(groff-base)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v nohup >/dev/null || need+=(coreutils)
# The HTTPS tests' clients and scanner.
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v sslscan >/dev/null || need+=(sslscan)
# The status page's readers: JSON, Prometheus's linter, a headless browser.
command -v jq >/dev/null || need+=(jq)
command -v promtool >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
# The high-availability test (tests/ha.sh) runs as root only.
if ((EUID == 0)); then
    command -v keepalived >/dev/null || need+=(keepalived)
    command -v ip >/dev/null || need+=(iproute2)
fi
if ((${#need[@]})); then
    if ((EUID == 0)); then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "tests/run.sh: missing ${need[*]}; install them (Debian packages) or run as root" >&2
        exit 1
    fi
fi

# Every test, with the proxies in the default fork model; then the
# integration suite again in each other model (PIBL_MODEL, read by
# tests/it/util.rs): every behaviour holds whatever serves the connections.
cargo test --all-targets "$@"
for model in prefork thread; do
    echo "integration tests, $model model"
    PIBL_MODEL=$model cargo test --test it "$@"
done

# Two pibl hosts behind keepalived, in network namespaces: root only.
if ((EUID == 0)); then
    echo "high availability: keepalived and two pibl hosts in network namespaces"
    cargo build --quiet
    bash tests/ha.sh target/debug/pibl
else
    echo "high availability test skipped: it needs root (network namespaces)"
fi

echo "lint: man pages"
# -W warning: warnings and errors fail; the style note that pibl(1) and
# pibl.conf(5) are not installed yet, where they cross-reference, does not.
mandoc -Tlint -W warning man/pibl.1 man/pibl.conf.5
groff -ww -z -mandoc man/pibl.1 man/pibl.conf.5

echo "lint: systemd units"
cargo build --quiet
unit_dir=$(mktemp -d)
trap 'rm -rf "$unit_dir"' EXIT
pibl=$PWD/target/debug/pibl
sed "s|/usr/local/bin/pibl|$pibl|" contrib/pibl.service >"$unit_dir/pibl.service"
cp contrib/pibl.socket "$unit_dir/pibl.socket"
# verify only warns about unknown keys and bad values: any output fails.
verify=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no \
    "$unit_dir/pibl.service" "$unit_dir/pibl.socket" 2>&1) || true
if [[ -n $verify ]]; then
    echo "$verify" >&2
    exit 1
fi
echo "lint: ok"
