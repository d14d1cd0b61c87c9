#!/usr/bin/env bash
# benches/compare.sh — pibl in each concurrency model beside nginx (as a
# reverse proxy, and with proxy_cache) and HAProxy, on the same three
# backends, in one run.
#
#   bash benches/compare.sh            # DURATION=5 ROUNDS=3 by default
#
# Installs nginx, haproxy, wrk and curl from Debian's packages when missing
# (as root), builds pibl in release mode, starts one nginx serving three
# backends on 127.0.0.1:18001-18003 (/small 1 KiB, /big 1 MiB), then runs
# each workload against each proxy, one after another, with the order
# rotated every round so that drift of the machine hits all alike:
#
#   ka     keep-alive, 50 connections, GET /small
#   close  a new connection per request (Connection: close), 50 at once
#   big    GET /big (1 MiB), 8 connections
#   cache  GET /small answered from the cache (nginx with proxy_cache, pibl
#          with --ttl 60; the others have no cache and are not run)
#   gz     GET /page.html (16 KiB of HTML) with Accept-Encoding: gzip,
#          compressed on the fly at level 5 (nginx `gzip on`, pibl's shipped
#          [compress]), keep-alive, no cache
#   gzcache the same from the cache: nginx proxy_cache + gzip (which
#          compresses every hit again), pibl's stored gzip representation
#
# and over HTTPS, each proxy with the same ECDSA P-256 certificate (nginx
# with ssl_session_cache shared and tickets on, HAProxy with its defaults):
#
#   tka    keep-alive over TLS, 50 connections, GET /small
#   tclose a new TLS connection per request, as wrk makes them: it offers
#          the session of its previous connection, so these resume
#   tnew   full handshakes: 8 `openssl s_time -new` clients at once, each a
#          new connection and a new session for every GET /small
#   tbig   GET /big over TLS, 8 connections
#   tmem   keep-alive over TLS again, once, for the memory per connection
#
# Every proxy is started fresh for each measurement and stopped after it.
# Every load run is bounded: wrk -d, inside `timeout`.  Loopback only.
#
# Reports medians over the rounds: requests/s (MB/s for big) with the ratio
# to nginx in the same run (to nginx + proxy_cache for cache), p50/p99
# latency of ka, the proportional memory (PSS, summed over the proxy's
# processes from /proc/PID/smaps_rollup) at its peak during a keep-alive
# run of its own (mem, once per proxy: reading fifty processes' page
# tables twice a second stalls them, which must not count in ka), and, for
# pibl, the CPU its parent spends per connection in close (accept, fork and
# reap in the fork model).  Writes results-DATE.md and chart-DATE.svg into
# OUT_DIR (default benches/results) and prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}     # seconds per wrk run
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}       # wrk threads
CONNS=${CONNS:-50}
BIG_CONNS=${BIG_CONNS:-8}
HANDSHAKE_CLIENTS=${HANDSHAKE_CLIENTS:-8}   # openssl s_time processes in tnew
MODELS=${MODELS:-fork prefork thread}
# The workloads run (a smoke run may pick a few), and the memory ones.
TESTS=${TESTS:-ka close big cache gz gzcache tka tclose tnew tbig}
MEM_TESTS=${MEM_TESTS-mem tmem}
OUT_DIR=${OUT_DIR:-benches/results}
# BASELINE=/path/to/pibl adds that build to the keep-alive runs (below).
# PIBL_BUILD=static measures the opt-in statically linked build
# (docs/performance.md), which cargo puts under target/<host tuple>/.
PIBL_BUILD=${PIBL_BUILD:-default}
case $PIBL_BUILD in
default) PIBL=$PWD/target/release/pibl ;;
static) PIBL=$PWD/target/$(rustc --print host-tuple)/release/pibl ;;
*) echo "compare.sh: PIBL_BUILD is default or static" >&2; exit 2 ;;
esac

log() { printf '[compare] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --------------------------------------------------------------- set-up ----
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
    ((EUID == 0)) || die "missing ${need[*]}: install them or run as root"
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
PATH=$PATH:/usr/sbin
log "building pibl (release, $PIBL_BUILD)"
if [[ $PIBL_BUILD == static ]]; then
    RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --quiet --target "$(rustc --print host-tuple)"
else
    cargo build --release --quiet
fi

RUN=$(mktemp -d /tmp/pibl-compare.XXXXXX)
chmod 755 "$RUN"   # nginx workers run as another user
SESSIONS=()
cleanup() {
    local sid
    for sid in "${SESSIONS[@]}"; do kill -TERM -- "-$sid" 2>/dev/null || true; done
    [[ -n ${KEEP:-} ]] || rm -rf "$RUN"
}
trap cleanup EXIT
mkdir -p "$OUT_DIR" "$RUN/wrk"

# start_session DIR COMMAND LOG: runs COMMAND in DIR in a session of its own
# (so all its processes can be stopped together); prints the session id.
start_session() {
    setsid bash -c "cd '$1' && exec $2" >"$3" 2>&1 </dev/null &
    echo $!
}

stop_session() {
    kill -TERM -- "-$1" 2>/dev/null || true
    local i
    for i in {1..50}; do
        kill -0 -- "-$1" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$1" 2>/dev/null || true
}

answers() { curl -s -o /dev/null --max-time 2 -w '%{http_code}' "http://127.0.0.1:$1/small" | grep -q 200; }

# One certificate for every proxy: ECDSA P-256, as a site would use.
TLS=$RUN/tls
mkdir -p "$TLS"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$TLS/key.pem" -out "$TLS/cert.pem" 2>/dev/null
cat "$TLS/cert.pem" "$TLS/key.pem" >"$TLS/both.pem"
chmod 644 "$TLS"/*.pem   # nginx workers run as another user

# ------------------------------------------------------------- backends ----
setup_backends() {
    local d=$RUN/backend port
    mkdir -p "$d/www" "$d/tmp"
    local line=abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789
    head -c 1024 < <(yes $line) >"$d/www/small"
    head -c 1048576 < <(yes $line) >"$d/www/big"
    # A catalogue page as a site would send: rows of words and numbers
    # (awk meets a closed pipe once head has its 16 KiB: not a failure).
    { awk 'BEGIN {
        split("anchor basalt cobalt dune ember fjord granite harbor iris juniper kelp lumen meadow nickel orchid prairie", w)
        printf "<!DOCTYPE html>\n<html><head><title>Catalogue</title></head>\n<body><table>\n"
        for (i = 0; i < 400; i++)
            printf "<tr><td class=\"id\">%d</td><td>%s %s</td><td class=\"price\">%d.%02d</td><td>%s</td></tr>\n",
                i, w[(i * 7) % 16 + 1], w[(i * 11) % 16 + 1], (i * 37) % 1000, (i * 13) % 97, w[(i * 5) % 16 + 1]
    }' || true; } | head -c 16384 >"$d/www/page.html"
    {
        echo "worker_processes auto; daemon off; pid $d/nginx.pid; error_log stderr warn;"
        echo "events { worker_connections 4096; }"
        echo "http { access_log off; sendfile on; tcp_nopush on; tcp_nodelay on;"
        echo "  keepalive_requests 1000000; default_type text/plain; types { text/html html; }"
        echo "  client_body_temp_path $d/tmp/b; proxy_temp_path $d/tmp/p; fastcgi_temp_path $d/tmp/f;"
        echo "  uwsgi_temp_path $d/tmp/u; scgi_temp_path $d/tmp/s;"
        for port in 18001 18002 18003; do
            echo "  server { listen 127.0.0.1:$port; root $d/www;"
            echo "    location / { add_header Cache-Control \"max-age=60\"; } }"
        done
        echo "}"
    } >"$d/nginx.conf"
    SESSIONS+=("$(start_session "$d" "nginx -p '$d/' -c '$d/nginx.conf'" "$RUN/backend.log")")
    for port in 18001 18002 18003; do
        for _ in {1..50}; do answers $port && break; sleep 0.1; done
        answers $port || die "backend $port does not answer (see $RUN/backend.log)"
    done
}

# -------------------------------------------------------------- proxies ----
declare -A PORT TPORT CMD WORKDIR
PROXIES_MAIN=()   # run in ka, close, big
PROXIES_CACHE=()  # run in cache
PROXIES_GZIP=()   # run in gz
PROXIES_GZCACHE=() # run in gzcache

setup_nginx() {  # key port cache(0|1) gzip(0|1)
    local d=$RUN/$1 cache="" gzip=""
    mkdir -p "$d/tmp"
    if [[ $3 == 1 ]]; then
        cache="proxy_cache_path $d/cache levels=1:2 keys_zone=c:10m max_size=1g inactive=10m use_temp_path=off;"
    fi
    if [[ ${4:-0} == 1 ]]; then   # as pibl's shipped [compress]
        gzip="gzip on; gzip_comp_level 5; gzip_min_length 256; gzip_proxied any; gzip_vary on;"
    fi
    cat >"$d/nginx.conf" <<EOF
worker_processes auto; daemon off; pid $d/nginx.pid; error_log stderr warn;
events { worker_connections 1024; }
http {
    access_log off; sendfile on; tcp_nopush on; tcp_nodelay on;
    client_body_temp_path $d/tmp/b; proxy_temp_path $d/tmp/p; fastcgi_temp_path $d/tmp/f;
    uwsgi_temp_path $d/tmp/u; scgi_temp_path $d/tmp/s;
    $cache
    $gzip
    upstream backends {
        server 127.0.0.1:18001; server 127.0.0.1:18002; server 127.0.0.1:18003;
        keepalive 32;
    }
    ssl_certificate $TLS/cert.pem; ssl_certificate_key $TLS/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m; ssl_session_tickets on;
    server {
        listen 127.0.0.1:$2;
        listen 127.0.0.1:$(($2 + 100)) ssl;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1; proxy_set_header Connection "";
            $([[ $3 == 1 ]] && echo "proxy_cache c;")
        }
    }
}
EOF
    PORT[$1]=$2 TPORT[$1]=$(($2 + 100)) WORKDIR[$1]=$d CMD[$1]="nginx -p '$d/' -c '$d/nginx.conf'"
}

setup_haproxy() {
    local d=$RUN/haproxy
    mkdir -p "$d"
    cat >"$d/haproxy.cfg" <<EOF
global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:18020
    bind 127.0.0.1:18120 ssl crt $TLS/both.pem
    default_backend be
backend be
    balance roundrobin
    server s1 127.0.0.1:18001
    server s2 127.0.0.1:18002
    server s3 127.0.0.1:18003
EOF
    PORT[haproxy]=18020 TPORT[haproxy]=18120 WORKDIR[haproxy]=$d CMD[haproxy]="haproxy -db -f '$d/haproxy.cfg'"
}

setup_pibl() {  # key port model ttl [binary]
    local d=$RUN/$1 bin=${5:-$PIBL} keep=cat
    mkdir -p "$d"
    # A baseline binary may predate [status]: its table goes.
    [[ $bin != "$PIBL" ]] && keep="sed /^\[status\]/,/^\$/d"
    # The shipped pibl.conf, moved to the benchmark's ports.
    sed -e "s/\b8080\b/$2/" -e "s/\b8081\b/$(($2 + 200))/" -e 's/\b9001\b/18001/' \
        -e 's/\b9002\b/18002/' -e 's/\b9003\b/18003/' pibl.conf | $keep >"$d/pibl.conf"
    printf '\n[tls]\nport = %d\ncert = "%s"\nkey = "%s"\n' $(($2 + 100)) "$TLS/cert.pem" "$TLS/key.pem" \
        >>"$d/pibl.conf"
    # Its access log goes to a file, as a service's would; stdout too.
    PORT[$1]=$2 TPORT[$1]=$(($2 + 100)) WORKDIR[$1]=$d
    CMD[$1]="'$bin' --config pibl.conf --model $3 --ttl $4 >stdout.log"
}

setup_nginx nginx 18010 0
setup_nginx nginx-cache 18011 1
setup_nginx nginx-gzip 18012 0 1
setup_nginx nginx-gzip-cache 18013 1 1
setup_haproxy
PROXIES_MAIN=(nginx haproxy)
PROXIES_CACHE=(nginx-cache)
PROXIES_GZIP=(nginx-gzip)
PROXIES_GZCACHE=(nginx-gzip-cache)
port=18030
for model in $MODELS; do
    setup_pibl "pibl-$model" $port "$model" 0
    setup_pibl "pibl-$model-cache" $((port + 1)) "$model" 60
    PROXIES_MAIN+=("pibl-$model")
    PROXIES_CACHE+=("pibl-$model-cache")
    PROXIES_GZIP+=("pibl-$model")
    PROXIES_GZCACHE+=("pibl-$model-cache")
    port=$((port + 2))
done
# BASELINE=/path/to/another/pibl runs that build too, as base-MODEL, in
# the keep-alive workload: a change measured against the build before
# it, in the same run.
PROXIES_BASE=()
if [[ -n ${BASELINE:-} ]]; then
    for model in $MODELS; do
        setup_pibl "base-$model" $port "$model" 0 "$BASELINE"
        PROXIES_BASE+=("base-$model")
        port=$((port + 1))
    done
fi

# ---------------------------------------------------------- measurement ----
cat >"$RUN/bench.lua" <<'EOF'
function done(s, lat, req)
    local e = s.errors
    io.write(string.format("RESULT %d %d %d %d %d %d\n", s.requests, s.duration, s.bytes,
        e.connect + e.read + e.write + e.status + e.timeout, lat:percentile(50), lat:percentile(99)))
end
EOF

# Proportional memory of a session's processes, in KiB.  Reading each
# process's smaps_rollup walks its page tables under its mmap lock, which
# stalls it: memory is sampled only in the mem runs, whose latency and
# rate are not reported.  (cat skips a process gone meanwhile.)
pss_kib() {
    local files
    files=$({ ps -o pid= -s "$1" 2>/dev/null || true; } | awk '{printf "/proc/%s/smaps_rollup ", $1}')
    [[ -n $files ]] || { echo 0; return; }
    # shellcheck disable=SC2086  # one path per word
    { cat $files 2>/dev/null || true; } | awk '/^Pss:/ {s += $2} END {print s + 0}'
}

# CPU ticks (user + system) of one process, its reaped children excluded.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# CPU ticks of a whole session: every process in it, with the children it
# reaped (a fork-model child's time goes to its parent when it is reaped).
session_ticks() {
    local files
    files=$({ ps -o pid= -s "$1" 2>/dev/null || true; } | awk '{printf "/proc/%s/stat ", $1}')
    [[ -n $files ]] || { echo 0; return; }
    # shellcheck disable=SC2086  # one path per word
    { cat $files 2>/dev/null || true; } | awk '{s += $14 + $15 + $16 + $17} END {print s + 0}'
}

# Whether PORT answers /page.html in gzip (else the measurement is moot).
gzips() {
    curl -s -o /dev/null --max-time 2 -H 'Accept-Encoding: gzip' -D - "http://127.0.0.1:$1/page.html" |
        grep -qi '^content-encoding: gzip'
}

RESULTS=$RUN/results.tsv   # round test proxy requests duration_us bytes errors p50 p99 pss cpu_us_per_conn idle_pss

# handshakes PORT OUT: HANDSHAKE_CLIENTS `openssl s_time -new` at once for
# DURATION seconds, each a full handshake and a GET /small per connection;
# writes a RESULT line as bench.lua does (connections, wall time in µs,
# clients that failed) to OUT.
handshakes() {
    local start end i pids=() failed=0 n
    start=$(date +%s%N)
    for ((i = 1; i <= HANDSHAKE_CLIENTS; i++)); do
        timeout -k 5 $((DURATION + 20)) openssl s_time -connect "127.0.0.1:$1" -new \
            -time "$DURATION" -www /small >"$2.$i" 2>&1 &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || failed=$((failed + 1)); done
    end=$(date +%s%N)
    n=$(cat "$2".* | awk '/connections in [0-9]+ real seconds/ {s += $1} END {print s + 0}')
    echo "RESULT $n $(((end - start) / 1000)) 0 $failed 0 0" >"$2"
}

run_one() {  # round test proxy
    local r=$1 t=$2 p=$3 path=/small conns=$CONNS hdr=() sid res pss=0 peak=0 idle=0 t0 t1 cpu=""
    local url="http://127.0.0.1:${PORT[$p]}"
    case $t in
        close | tclose) hdr=(-H 'Connection: close') ;;&
        big | tbig) path=/big conns=$BIG_CONNS ;;&
        gz | gzcache) path=/page.html hdr=(-H 'Accept-Encoding: gzip') ;;&
        t*) url="https://127.0.0.1:${TPORT[$p]}" ;;
    esac
    rm -rf "${WORKDIR[$p]}/cache"
    sid=$(start_session "${WORKDIR[$p]}" "${CMD[$p]}" "$RUN/$p.log")
    for _ in {1..100}; do answers "${PORT[$p]}" && break; sleep 0.05; done
    if [[ $t == cache ]]; then   # fill the cache
        for _ in 1 2 3; do answers "${PORT[$p]}" || true; done
    fi
    if [[ $t == gz* ]]; then   # fill the cache (the identity, then pibl's gzip)
        for _ in 1 2 3; do gzips "${PORT[$p]}" || true; done
        gzips "${PORT[$p]}" || { log "  r$r $t $p: /page.html not gzipped"; stop_session "$sid"; return; }
    fi
    local s0
    s0=$(session_ticks "$sid")
    [[ $t == tmem ]] && idle=$(pss_kib "$sid")
    t0=$(cpu_ticks "$sid")
    if [[ $t == tnew ]]; then
        handshakes "${TPORT[$p]}" "$RUN/wrk/$r.$t.$p" &
    else
        timeout -k 5 $((DURATION + 20)) wrk -t"$THREADS" -c"$conns" -d"${DURATION}s" --timeout 2s \
            -s "$RUN/bench.lua" "${hdr[@]}" "$url$path" >"$RUN/wrk/$r.$t.$p" 2>&1 &
    fi
    local wrk_pid=$!
    while [[ $t == *mem ]] && kill -0 $wrk_pid 2>/dev/null; do
        pss=$(pss_kib "$sid"); ((pss > peak)) && peak=$pss
        sleep 0.5
    done
    wait $wrk_pid || true
    t1=$(cpu_ticks "$sid")
    local s1
    s1=$(session_ticks "$sid")
    stop_session "$sid"
    res=$(grep -m1 '^RESULT ' "$RUN/wrk/$r.$t.$p" || true)
    [[ -n $res ]] || { log "  r$r $t $p: no result (see $RUN/wrk/$r.$t.$p)"; return; }
    read -r _ req dur bytes errs p50 p99 <<<"$res"
    if [[ $p == pibl-* && $t == close && $req -gt 0 ]]; then
        cpu=$(( (t1 - t0) * 1000000 / $(getconf CLK_TCK) / req ))
    fi
    if [[ $t == gz* && $req -gt 0 ]]; then   # the whole proxy's CPU per response
        cpu=$(( (s1 - s0) * 1000000 / $(getconf CLK_TCK) / req ))
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$r" "$t" "$p" "$req" "$dur" "$bytes" "$errs" "$p50" "$p99" "$peak" "$cpu" "$idle" >>"$RESULTS"
    log "  r$r $t $p: $(awk -v n="$req" -v d="$dur" 'BEGIN {printf "%.0f req/s", n / d * 1e6}') errors=$errs"
}

# rotate N ARRAY...: the array rotated left by N.
rotate() { local n=$1; shift; local a=("$@"); local k=$((n % ${#a[@]})); echo "${a[@]:k}" "${a[@]:0:k}"; }

# A port already taken would send the load to whatever holds it.
for port in 18001 18002 18003 "${PORT[@]}" "${TPORT[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is already in use: stop what listens there first"
    fi
done
setup_backends
log "backends up; $ROUNDS rounds of ${DURATION}s runs: ${PROXIES_MAIN[*]} ${PROXIES_CACHE[*]} nginx-gzip nginx-gzip-cache"
for ((r = 1; r <= ROUNDS; r++)); do
    # mem: keep-alive load again, once, for the memory figure alone.
    read -ra tests <<<"$TESTS"
    read -ra more <<<"$MEM_TESTS"
    ((r == 1)) && tests+=("${more[@]}")
    for t in "${tests[@]}"; do
        case $t in
            cache) list=("${PROXIES_CACHE[@]}") ;;
            gz) list=("${PROXIES_GZIP[@]}") ;;
            gzcache) list=("${PROXIES_GZCACHE[@]}") ;;
            ka) list=("${PROXIES_MAIN[@]}" "${PROXIES_BASE[@]}") ;;
            *) list=("${PROXIES_MAIN[@]}") ;;
        esac
        for p in $(rotate $((r - 1)) "${list[@]}"); do run_one "$r" "$t" "$p"; done
    done
done

# --------------------------------------------------------------- report ----
stamp=$(date -u +%Y-%m-%d_%H%M%S)
report=$OUT_DIR/results-$stamp.md
chart=$OUT_DIR/chart-$stamp.svg
machine="$(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(uname -sr)"
versions="$(nginx -v 2>&1 | sed 's/.*: //'), $(haproxy -v 2>&1 | head -1 | awk '{print "HAProxy " $3}'), $("$PIBL" --version)"

# Medians per (test, proxy) of: rate, p50, p99, pss, cpu.
awk -F'\t' '
function median(list,   n, a, i, j, x) {
    n = split(list, a, " ")
    for (i = 2; i <= n; i++) { x = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > x + 0; j--) a[j + 1] = a[j]; a[j + 1] = x }
    return n ? (n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2) : ""
}
{
    k = $2 SUBSEP $3; seen[k] = 1
    rate = ($2 == "big") ? $6 / $5 : $4 / ($5 / 1e6)   # MB/s (bytes/us) or req/s
    R[k] = R[k] " " rate; P50[k] = P50[k] " " $8; P99[k] = P99[k] " " $9
    if ($10 > 0) M[k] = M[k] " " $10
    if ($12 > 0) I[k] = I[k] " " $12
    if ($11 != "") C[k] = C[k] " " $11
    E[k] += $7
    if ($4 > 0) B[k] = B[k] " " $6 / $4
}
END {
    for (k in seen) {
        split(k, kk, SUBSEP)
        printf "%s\t%s\t%.1f\t%s\t%s\t%s\t%s\t%d\t%s\t%.0f\n", kk[1], kk[2], median(R[k]), median(P50[k]), median(P99[k]), median(M[k]), median(C[k]), E[k], median(I[k]), median(B[k])
    }
}' "$RESULTS" >"$RUN/medians.tsv"

get() {  # test proxy column(3 rate 4 p50 5 p99 6 pss 7 cpu 8 errors 9 idle pss 10 bytes/resp.)
    awk -F'\t' -v t="$1" -v p="$2" -v c="$3" '$1 == t && $2 == p {print $c}' "$RUN/medians.tsv"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b == 0) print "-"; else printf "%.2f", a / b }'; }
fmt() { awk -v v="$1" 'BEGIN { if (v == "") print "-"; else if (v >= 100) printf "%.0f", v; else printf "%.2f", v }'; }

{
    echo "# pibl beside nginx and HAProxy — benches/compare.sh, $stamp UTC"
    echo
    echo "Machine: $machine. $versions."
    echo "wrk -t$THREADS, ${DURATION}s per run, $ROUNDS rounds (medians), order rotated each round;"
    echo "3 nginx backends on loopback; every proxy on the same 2 cores as wrk and the backends."
    echo
    echo "| proxy | keep-alive req/s (× nginx) | new conn. req/s (×) | 1 MiB MB/s (×) | cache hits req/s (× nginx cache) | p50 / p99 ms (p99 ×) | PSS at 50 conns, MiB | errors |"
    echo "|---|---|---|---|---|---|---|---|"
    for p in "${PROXIES_MAIN[@]}"; do
        c=$p; [[ $p == nginx ]] && c=nginx-cache; [[ $p == pibl-* ]] && c=$p-cache; [[ $p == haproxy ]] && c=""
        ka=$(get ka "$p" 3) cl=$(get close "$p" 3) bg=$(get big "$p" 3)
        ch=""; [[ -n $c ]] && ch=$(get cache "$c" 3)
        p50=$(get ka "$p" 4) p99=$(get ka "$p" 5) pss=$(get mem "$p" 6)
        errs=0
        for e in "$(get ka "$p" 8)" "$(get close "$p" 8)" "$(get big "$p" 8)" "${c:+$(get cache "$c" 8)}"; do
            errs=$((errs + ${e:-0}))
        done
        printf '| %s | %s (%s) | %s (%s) | %s (%s) | %s (%s) | %s / %s (%s) | %s | %s |\n' "$p" \
            "$(fmt "$ka")" "$(ratio "$ka" "$(get ka nginx 3)")" \
            "$(fmt "$cl")" "$(ratio "$cl" "$(get close nginx 3)")" \
            "$(fmt "$bg")" "$(ratio "$bg" "$(get big nginx 3)")" \
            "$(fmt "$ch")" "$(ratio "$ch" "$(get cache nginx-cache 3)")" \
            "$(awk -v v="$p50" 'BEGIN {printf "%.2f", v / 1000}')" "$(awk -v v="$p99" 'BEGIN {printf "%.2f", v / 1000}')" \
            "$(ratio "$p99" "$(get ka nginx 5)")" \
            "$(awk -v v="$pss" 'BEGIN {printf "%.1f", v / 1024}')" "$errs"
    done
    echo
    if ((${#PROXIES_BASE[@]})); then
        echo "Keep-alive of the baseline build ($BASELINE) in the same run:"
        echo
        for p in "${PROXIES_BASE[@]}"; do
            q=pibl-${p#base-}
            echo "- $p: $(fmt "$(get ka "$p" 3)") req/s ($(ratio "$(get ka "$p" 3)" "$(get ka nginx 3)") × nginx); this build's $q: $(fmt "$(get ka "$q" 3)") ($(ratio "$(get ka "$q" 3)" "$(get ka "$p" 3)") × the baseline)"
        done
        echo
    fi
    echo "Over HTTPS (TLS 1.3, ECDSA P-256; same backends, plain behind the proxy):"
    echo
    echo "| proxy | TLS keep-alive req/s (×) | new TLS conn., resumed (wrk) req/s (×) | full handshakes/s (×) | 1 MiB over TLS MB/s (×) | p50 / p99 ms TLS keep-alive | PSS per TLS conn., KiB | errors |"
    echo "|---|---|---|---|---|---|---|---|"
    for p in "${PROXIES_MAIN[@]}"; do
        tka=$(get tka "$p" 3) tcl=$(get tclose "$p" 3) tnw=$(get tnew "$p" 3) tbg=$(get tbig "$p" 3)
        tp50=$(get tka "$p" 4) tp99=$(get tka "$p" 5)
        per=$(awk -v peak="$(get tmem "$p" 6)" -v idle="$(get tmem "$p" 9)" -v n="$CONNS" \
            'BEGIN { if (peak == "" || idle == "") print "-"; else printf "%.0f", (peak - idle) / n }')
        errs=0
        for t in tka tclose tnew tbig; do e=$(get $t "$p" 8); errs=$((errs + ${e:-0})); done
        printf '| %s | %s (%s) | %s (%s) | %s (%s) | %s (%s) | %s / %s | %s | %s |\n' "$p" \
            "$(fmt "$tka")" "$(ratio "$tka" "$(get tka nginx 3)")" \
            "$(fmt "$tcl")" "$(ratio "$tcl" "$(get tclose nginx 3)")" \
            "$(fmt "$tnw")" "$(ratio "$tnw" "$(get tnew nginx 3)")" \
            "$(fmt "$tbg")" "$(ratio "$tbg" "$(get tbig nginx 3)")" \
            "$(awk -v v="$tp50" 'BEGIN {printf "%.2f", v / 1000}')" "$(awk -v v="$tp99" 'BEGIN {printf "%.2f", v / 1000}')" \
            "$per" "$errs"
    done
    echo
    echo "Full handshakes: $HANDSHAKE_CLIENTS \`openssl s_time -new\` clients at once (errors: clients that failed)."
    echo "PSS per TLS connection: (peak PSS at $CONNS TLS keep-alive connections − PSS idle) / $CONNS."
    echo
    echo "Compression: GET /page.html (16 KiB of HTML) with Accept-Encoding: gzip, $CONNS keep-alive"
    echo "connections; on the fly at level 5 with no cache (against nginx \`gzip on\`), and from the cache"
    echo "(against nginx proxy_cache + gzip). Bytes per response on the wire, head included (the identity"
    echo "body is 16384); CPU per response of the whole proxy, every process, from /proc/PID/stat:"
    echo
    echo "| proxy | on the fly req/s (× nginx gzip) | bytes/resp. | CPU µs/resp. | cache hits req/s (× nginx cache+gzip) | bytes/resp. | CPU µs/resp. | errors |"
    echo "|---|---|---|---|---|---|---|---|"
    for i in "${!PROXIES_GZIP[@]}"; do
        p=${PROXIES_GZIP[$i]} c=${PROXIES_GZCACHE[$i]}
        gz=$(get gz "$p" 3) gc=$(get gzcache "$c" 3)
        e1=$(get gz "$p" 8) e2=$(get gzcache "$c" 8)
        printf '| %s | %s (%s) | %s | %s | %s (%s) | %s | %s | %s |\n' "$p" \
            "$(fmt "$gz")" "$(ratio "$gz" "$(get gz nginx-gzip 3)")" "$(get gz "$p" 10)" "$(get gz "$p" 7)" \
            "$(fmt "$gc")" "$(ratio "$gc" "$(get gzcache nginx-gzip-cache 3)")" "$(get gzcache "$c" 10)" "$(get gzcache "$c" 7)" \
            $((${e1:-0} + ${e2:-0}))
    done
    echo
    echo "CPU per connection of pibl's main process in the new-connection test, from /proc/PID/stat"
    echo "(10 ms ticks over the run): in the fork model the parent's accept, fork and reap; in the"
    echo "prefork model the parent's upkeep only; in the thread model the whole process, every thread:"
    for model in $MODELS; do
        echo "- $model: $(get close "pibl-$model" 7) µs"
    done
    echo
    echo "Chart: $(basename "$chart"). Raw rows: round, test, proxy, requests, duration µs, bytes, errors, p50 µs, p99 µs, peak PSS KiB, parent CPU µs/conn, idle PSS KiB."
    echo
    echo '```'
    cat "$RESULTS"
    echo '```'
} >"$report"

# Chart: the ratios to nginx, one group of bars per workload.
{
    tests=(ka close big cache tka tnew tbig)
    names=("keep-alive" "new connection" "1 MiB bodies" "cache hits" "TLS keep-alive" "TLS handshakes" "TLS 1 MiB")
    n=${#PROXIES_MAIN[@]} gw=$((n * 22 + 30)) h=300 top=40 base=250
    w=$((80 + ${#tests[@]} * gw + 160))
    echo "<svg xmlns='http://www.w3.org/2000/svg' width='$w' height='$h' font-family='sans-serif' font-size='11'>"
    echo "<rect width='100%' height='100%' fill='white'/>"
    echo "<text x='10' y='20' font-size='14'>Throughput as a ratio to nginx in the same run ($stamp, $(nproc) cores)</text>"
    max=2
    y1=$((base - (base - top) / max))
    echo "<line x1='60' y1='$y1' x2='$((w - 160))' y2='$y1' stroke='#999' stroke-dasharray='4 3'/><text x='20' y='$((y1 + 4))'>1.0×</text>"
    echo "<line x1='60' y1='$base' x2='$((w - 160))' y2='$base' stroke='black'/><text x='20' y='$((base + 4))'>0</text>"
    echo "<text x='20' y='$((top + 4))'>${max}×</text>"
    colors=("#4c72b0" "#dd8452" "#55a868" "#c44e52" "#8172b3" "#937860" "#da8bc3")
    for ti in "${!tests[@]}"; do
        t=${tests[$ti]} x0=$((70 + ti * gw))
        echo "<text x='$x0' y='$((base + 18))'>${names[$ti]}</text>"
        for pi in "${!PROXIES_MAIN[@]}"; do
            p=${PROXIES_MAIN[$pi]} ref=nginx q=$p
            if [[ $t == cache ]]; then
                ref=nginx-cache
                case $p in nginx) q=nginx-cache ;; pibl-*) q=$p-cache ;; *) continue ;; esac
            fi
            r=$(ratio "$(get "$t" "$q" 3)" "$(get "$t" "$ref" 3)")
            [[ $r == - ]] && continue
            bh=$(awk -v r="$r" -v m=$max -v s=$((base - top)) 'BEGIN {v = r > m ? m : r; printf "%d", v / m * s}')
            echo "<rect x='$((x0 + pi * 22))' y='$((base - bh))' width='18' height='$bh' fill='${colors[$pi]}'><title>$q: ${r}×</title></rect>"
            echo "<text x='$((x0 + pi * 22))' y='$((base - bh - 3))' font-size='8'>$r</text>"
        done
    done
    for pi in "${!PROXIES_MAIN[@]}"; do
        echo "<rect x='$((w - 150))' y='$((top + pi * 18))' width='12' height='12' fill='${colors[$pi]}'/>"
        echo "<text x='$((w - 132))' y='$((top + pi * 18 + 10))'>${PROXIES_MAIN[$pi]}</text>"
    done
    echo "</svg>"
} >"$chart"

cat "$report" | sed '/^```$/,$d'
log "wrote $report and $chart"
