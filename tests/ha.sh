#!/usr/bin/env bash
# tests/ha.sh — two pibl hosts behind one address, for real: network
# namespaces made here (a switch, a client, hosts a and b, a backend),
# joined by veth pairs on a bridge inside the switch's namespace, with
# addresses from 198.51.100.0/24 (documentation only, never routed);
# keepalived (contrib/keepalived.conf, its interface, priority and
# checker port adapted) and pibl on each host.  A client asks the virtual
# address every 50 ms; pibl on the master is killed; the address must move
# to the backup and requests succeed again.  Says the switch time and the
# failed requests; then checks that a TLS session from host a resumes on
# host b, which shares its ticket_key_file.
#
#   sudo bash tests/ha.sh [path/to/pibl]     # tests/run.sh runs it as root
#
# Everything it makes is removed at its end, also when it fails.  Bounded:
# each wait has a deadline, the whole run takes well under a minute.
set -euo pipefail
cd "$(dirname "$0")/.."

PIBL=${1:-$PWD/target/debug/pibl}
PIBL=$(realpath "$PIBL")
NET=198.51.100
VIP=$NET.100
ID=$$
NS=(sw$ID cl$ID a$ID b$ID be$ID)
WORK=$(mktemp -d /tmp/pibl-ha.XXXXXX)
chmod 755 "$WORK"

say() { printf '[ha] %s\n' "$*"; }
fail() { say "FAILED: $*"; exit 1; }

cleanup() {
    local ns pid
    for pid in "$WORK"/*.pid; do
        [[ -e $pid ]] && kill -TERM "$(cat "$pid")" 2>/dev/null || true
    done
    for ns in "${NS[@]}"; do
        # Whatever still runs in a namespace goes with it.
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# until SECONDS COMMAND...: runs COMMAND every 0.1 s until it succeeds,
# for at most SECONDS.
until_ok() {
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# ------------------------------------------------------------- network ----
# A machine that allows no network namespace (a container without
# CAP_SYS_ADMIN) cannot run this test: said, not failed.
if ! ip netns add "probe$ID" 2>/dev/null; then
    say "skipped: this machine allows no network namespace"
    exit 0
fi
ip netns del "probe$ID"
for ns in "${NS[@]}"; do
    ip netns add "$ns"
    in_ns "$ns" ip link set lo up
done
in_ns "${NS[0]}" ip link add br0 type bridge
in_ns "${NS[0]}" ip link set br0 up
# host index in NS, its address
join() {
    local ns=${NS[$1]} addr=$2 port=p$1
    ip link add "$port$ID" netns "${NS[0]}" type veth peer name eth0 netns "$ns"
    in_ns "${NS[0]}" ip link set "$port$ID" master br0 up
    in_ns "$ns" ip addr add "$addr/24" dev eth0
    in_ns "$ns" ip link set eth0 up
}
join 1 $NET.10   # client
join 2 $NET.11   # host a
join 3 $NET.12   # host b
join 4 $NET.20   # backend

# ------------------------------------------------------------- backend ----
printf 'backends = ["%s:9001"]\n' $NET.20 >"$WORK/backend.conf"
in_ns "${NS[4]}" "$PIBL" backend --config "$WORK/backend.conf" --listen $NET.20 --port 9001 \
    --name backend >"$WORK/backend.log" 2>&1 &
echo $! >"$WORK/backend.pid"

# ---------------------------------------------------------- pibl hosts ----
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=ha.test \
    -addext "subjectAltName=IP:$VIP" -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
head -c 80 /dev/urandom >"$WORK/tickets.key"
for host in a b; do
    mkdir -p "$WORK/$host"
    cat >"$WORK/$host/pibl.conf" <<EOF
listen = "0.0.0.0"
port = 8080
backends = ["$NET.20:9001"]
[status]
port = 8081
[tls]
port = 8443
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
ticket_key_file = "$WORK/tickets.key"
EOF
done
start_pibl() {  # host index
    local host=$1 ns=${NS[$2]}
    (cd "$WORK/$host" && exec ip netns exec "$ns" "$PIBL" --config pibl.conf) >>"$WORK/$host/pibl.out" 2>&1 &
    echo $! >"$WORK/pibl-$host.pid"
}
start_pibl a 2
start_pibl b 3

# ----------------------------------------------------------- keepalived ----
for host in a b; do
    [[ $host == a ]] && priority=150 || priority=100
    sed -e "s/priority 150 .*/priority $priority/" contrib/keepalived.conf >"$WORK/$host/keepalived.conf"
done
for i in 2 3; do
    host=$([[ $i == 2 ]] && echo a || echo b)
    in_ns "${NS[$i]}" keepalived --dont-fork --log-console --vrrp \
        --use-file "$WORK/$host/keepalived.conf" \
        --pid "$WORK/$host/k.pid" --vrrp_pid "$WORK/$host/kv.pid" \
        --checkers_pid "$WORK/$host/kc.pid" >"$WORK/$host/keepalived.log" 2>&1 &
    echo $! >"$WORK/keepalived-$host.pid"
done

holds() { in_ns "${NS[$1]}" ip -o addr show dev eth0 | grep -q " $VIP/"; }
asks() { in_ns "${NS[1]}" curl -sf -o /dev/null -m 1 "http://$VIP:8080/whoami"; }
until_ok 20 holds 2 || { cat "$WORK"/a/keepalived.log; fail "host a never took $VIP"; }
until_ok 10 asks || fail "no answer on $VIP"
say "host a holds $VIP and pibl answers there"

# A TLS session made with host a, for later (-ign_eof: the ticket comes
# after the handshake, with the response).
request=$'GET /whoami HTTP/1.1\r\nHost: ha.test\r\nConnection: close\r\n\r\n'
in_ns "${NS[1]}" openssl s_client -connect "$VIP:8443" -ign_eof -sess_out "$WORK/session" \
    -CAfile "$WORK/cert.pem" <<<"$request" >"$WORK/tls-a.log" 2>&1 || true
[[ -s $WORK/session ]] || fail "no TLS session with host a"

# ------------------------------------------------------------- failover ----
# The client: one request every 50 ms, 400 at most (20 s), each line
# "epoch-ms status".
in_ns "${NS[1]}" bash -c '
    for i in $(seq 400); do
        code=$(curl -s -o /dev/null -m 0.5 -w "%{http_code}" "http://'$VIP':8080/whoami" || true)
        echo "$(date +%s%3N) $code"
        sleep 0.05
    done' >"$WORK/client.log" &
client=$!
sleep 2
killed=$(date +%s%3N)
kill -KILL "$(cat "$WORK/pibl-a.pid")"
say "killed pibl on host a (its parent, as a crash would)"
until_ok 20 holds 3 || { cat "$WORK"/b/keepalived.log; fail "$VIP never moved to host b"; }
say "host b holds $VIP"
until_ok 10 asks || fail "no answer on $VIP from host b"
sleep 1
kill "$client" 2>/dev/null || true
wait "$client" 2>/dev/null || true

awk -v killed="$killed" '
    $1 >= killed && $2 != 200 { failed++; if (!first) first = $1 }
    $1 >= killed && $2 == 200 && first && !back { back = $1 }
    END {
        printf "[ha] switch: %.1f s from the kill to the first answer from host b; %d requests failed meanwhile\n",
            (back - killed) / 1000, failed
        if (!back) exit 1
    }' "$WORK/client.log" || fail "no request succeeded after the kill"

# ---------------------------------------------------------- resumption ----
in_ns "${NS[1]}" openssl s_client -connect "$VIP:8443" -ign_eof -sess_in "$WORK/session" \
    -CAfile "$WORK/cert.pem" <<<"$request" >"$WORK/tls-b.log" 2>&1 || true
grep -q "Reused, TLSv1" "$WORK/tls-b.log" || { cat "$WORK/tls-b.log"; fail "the session from host a did not resume on host b"; }
say "a TLS session from host a resumed on host b (shared ticket_key_file)"
say "ok"
