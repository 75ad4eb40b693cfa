#!/usr/bin/env bash
# End-to-end test of the Debian package under a real systemd: builds the .deb, installs
# it in a fresh Debian bookworm root, boots that root with systemd-nspawn and drives three
# mmapd@<port> instances through systemctl, curl and mmapd-admin; moves them to mutual TLS
# and tokens from /etc/mmapd/tls (certificates made with openssl here) and reloads one;
# then grows the cluster with a fourth (MMAPD_JOIN, over TLS) and removes the first while
# a client keeps writing over HTTPS. A fifth,
# mmapd@3005, serves HTTPS with its certificate and tokens from /etc/mmapd/tls and takes
# a new certificate (of a new CA) and new tokens on `systemctl reload`.
#
#   bash tests/systemd-e2e.sh        (as root; prints PASS or FAIL or SKIP as its last line)
#
# Exit status: 0 passed, 1 failed, 77 this machine cannot run it (the reason is printed).
#
# The bookworm root is made once with debootstrap and cached under $MMAPD_E2E_CACHE
# (default /var/cache/mmapd-e2e), keyed by ROOT_KEY below; each run boots a fresh copy.
# The container shares the host's network namespace (nspawn's default without
# --private-network), so 127.0.0.1:3001 inside is the host's loopback: the ports 3001-3005
# must be free on the host.
#
# Host without systemd as PID 1: nspawn normally asks the host's systemd (over D-Bus) for
# a scope unit and registers with machined. --register=no --keep-unit skips both, so it
# runs on a machine whose PID 1 is not systemd; commands go into the container with
# nsenter into its init (machinectl/systemd-run -M need the host's machined).
set -euo pipefail
cd "$(dirname "$0")/.."

ROOT_KEY="bookworm-minbase-systemd,systemd-sysv,dbus,curl-1"
MIRROR=${MMAPD_E2E_MIRROR:-http://deb.debian.org/debian}
CACHE=${MMAPD_E2E_CACHE:-/var/cache/mmapd-e2e}
PEERS=127.0.0.1:3001,127.0.0.1:3002,127.0.0.1:3003
PORTS=(3001 3002 3003)

started=$(date +%s)
run_dir=""
nspawn_pid=""
init_pid=""
writer_pid=""
outcome="FAIL"

say() { echo "[e2e $(($(date +%s) - started))s] $*"; }

skip() {
    echo "SKIP: systemd end-to-end test cannot run on this machine: $*"
    outcome="SKIP"
    exit 77
}

fail() {
    echo "FAIL: $*" >&2
    if [ -n "$init_pid" ] && [ -d "/proc/$init_pid" ]; then
        echo "---- journalctl -u 'mmapd@*' -n 50 ----" >&2
        inside journalctl --no-pager -u 'mmapd@*' -n 50 >&2 || true
        echo "---- systemctl list-units 'mmapd@*' ----" >&2
        inside systemctl --no-pager list-units --all 'mmapd@*' >&2 || true
    elif [ -n "$run_dir" ] && [ -f "$run_dir/console.log" ]; then
        echo "---- container console (last 50 lines) ----" >&2
        tail -n 50 "$run_dir/console.log" >&2
    fi
    exit 1
}

cleanup() {
    local status=$?
    trap - EXIT
    if [ -n "$writer_pid" ]; then
        kill "$writer_pid" 2>/dev/null || true
        wait "$writer_pid" 2>/dev/null || true
    fi
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        # nspawn turns SIGTERM into a clean poweroff of a booted container.
        kill -TERM "$nspawn_pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            kill -0 "$nspawn_pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$nspawn_pid" 2>/dev/null || true
        wait "$nspawn_pid" 2>/dev/null || true
    fi
    if [ -n "$run_dir" ]; then
        rm -rf "$run_dir"
    fi
    if [ "$status" -eq 0 ]; then
        echo "PASS: systemd end-to-end test ($(($(date +%s) - started)) s)"
    elif [ "$outcome" = SKIP ]; then
        :
    else
        echo "FAIL: systemd end-to-end test ($(($(date +%s) - started)) s)"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM

# Runs a command inside the booted container, as root, with a clean environment.
inside() {
    nsenter -t "$init_pid" -a -- env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 SYSTEMD_PAGER=cat "$@"
}

# Runs a command inside the container as USER (with USER's supplementary groups).
inside_as() {
    local user=$1
    shift
    inside runuser -u "$user" -- "$@"
}

# Waits up to $1 seconds for the command after it to succeed.
wait_for() {
    local seconds=$1
    shift
    local deadline=$(($(date +%s) + seconds))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

unit_property() { inside systemctl show -p "$2" --value "mmapd@$1.service"; }

# ---- preconditions ------------------------------------------------------------------

[ "$(id -u)" -eq 0 ] || skip "it must run as root (debootstrap, chroot, systemd-nspawn)"
for port in "${PORTS[@]}" 3004 3005; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        skip "port $port is in use on the host (the container shares the host's network)"
    fi
done

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v lintian >/dev/null || missing+=(lintian)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || skip "apt-get update failed: cannot install ${missing[*]}"
    apt-get install -y -q "${missing[@]}" >/dev/null || skip "cannot install ${missing[*]}"
fi

# ---- the package --------------------------------------------------------------------

mkdir -p "$CACHE"
say "building the package"
deb=$(packaging/build-deb 2>"$CACHE/build-deb.log" | tail -n 1) || {
    tail -n 30 "$CACHE/build-deb.log" >&2
    fail "packaging/build-deb failed (log: $CACHE/build-deb.log)"
}
say "package: $deb"

say "lintian"
lintian_out=$(lintian --info "$deb" 2>&1 || true)
echo "$lintian_out"
if grep -q '^E:' <<<"$lintian_out"; then
    fail "lintian reports errors"
fi

if command -v systemd-analyze >/dev/null; then
    say "systemd-analyze security --offline=yes (host, the unit as packaged)"
    unit_dir=$(mktemp -d)
    cp systemd/mmapd@.service "$unit_dir/mmapd@3001.service"
    offline=$(cd "$unit_dir" && systemd-analyze security --offline=yes mmapd@3001.service 2>&1 | tail -n 1)
    rm -r "$unit_dir"
    echo "$offline"
    grep -qE 'exposure level for mmapd@3001.service: (0\.[0-9]|1\.[0-5]) ' <<<"$offline" ||
        fail "offline exposure level above 1.5: $offline"
fi

# ---- the root file system -----------------------------------------------------------

cached="$CACHE/root-$ROOT_KEY"
if [ ! -f "$cached/.complete" ]; then
    say "debootstrap bookworm into $cached (once; cached)"
    rm -rf "$cached.partial"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,curl \
        bookworm "$cached.partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || {
        tail -n 20 "$CACHE/debootstrap.log" >&2
        skip "debootstrap failed (is $MIRROR reachable?); log in $CACHE/debootstrap.log"
    }
    # A container boots without a console login and without a network to wait for.
    echo mmapd-e2e >"$cached.partial/etc/hostname"
    ln -sf /dev/null "$cached.partial/etc/systemd/system/console-getty.service"
    ln -sf /dev/null "$cached.partial/etc/systemd/system/systemd-networkd-wait-online.service"
    touch "$cached.partial/.complete"
    mv "$cached.partial" "$cached"
fi

run_dir=$(mktemp -d "$CACHE/run.XXXXXX")
root="$run_dir/root"
say "copying the cached root"
cp -a "$cached" "$root"
rm -f "$root/.complete"

say "installing the package in the root (dpkg -i in a chroot)"
cp "$deb" "$root/tmp/mmapd.deb"
chroot "$root" dpkg -i /tmp/mmapd.deb || fail "dpkg -i failed"
chroot "$root" getent passwd mmapd >/dev/null || fail "postinst did not create the mmapd user"
chroot "$root" useradd --create-home --groups mmapd alice || fail "useradd alice"
chroot "$root" useradd --create-home bob || fail "useradd bob"
[ -x "$root/usr/sbin/mmapd" ] || fail "/usr/sbin/mmapd not installed"
[ -x "$root/usr/bin/mmapd-admin" ] || fail "/usr/bin/mmapd-admin not installed"
[ -f "$root/usr/share/man/man8/mmapd.8.gz" ] || fail "man page not installed gzipped"
if [ -e "$root/etc/systemd/system/multi-user.target.wants/mmapd@3001.service" ]; then
    fail "the package enabled an instance"
fi
echo "MMAPD_PEERS=$PEERS" >>"$root/etc/default/mmapd"

# ---- boot ---------------------------------------------------------------------------

say "booting the container"
systemd-nspawn --quiet --register=no --keep-unit --console=passive -b -D "$root" \
    --machine=mmapd-e2e systemd.firstboot=off >"$run_dir/console.log" 2>&1 &
nspawn_pid=$!

find_init() {
    local pid
    for pid in $(pgrep -P "$nspawn_pid" 2>/dev/null); do
        if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$root/usr/lib/systemd/systemd" ] ||
            [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd ]; then
            init_pid=$pid
            return 0
        fi
    done
    return 1
}
if ! wait_for 30 find_init; then
    if ! kill -0 "$nspawn_pid" 2>/dev/null; then
        tail -n 30 "$run_dir/console.log" >&2
        skip "systemd-nspawn exited before the container's systemd started (console above)"
    fi
    skip "no systemd process appeared under systemd-nspawn within 30 s"
fi
say "container init is host pid $init_pid"
state=""
for _ in $(seq 1 120); do
    state=$(inside systemctl is-system-running 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
    sleep 0.5
done
case "$state" in
    running) ;;
    degraded)
        say "system is degraded; failed units:"
        inside systemctl --no-pager --failed || true
        ;;
    *)
        tail -n 30 "$run_dir/console.log" >&2
        skip "the container's systemd did not finish booting within 60 s (state: '${state:-none}')"
        ;;
esac
say "booted ($state)"

# ---- three instances ----------------------------------------------------------------

say "systemctl start mmapd@3001 mmapd@3002 mmapd@3003"
inside systemctl start mmapd@3001 mmapd@3002 mmapd@3003 || fail "systemctl start failed"
for port in "${PORTS[@]}"; do
    # Type=notify: systemctl start returns once READY=1 arrived, and mmapd sends it only
    # after both listeners are bound: so the API and the admin socket must answer now.
    [ "$(unit_property "$port" ActiveState)" = active ] || fail "mmapd@$port is not active"
    [ "$(unit_property "$port" Type)" = notify ] || fail "mmapd@$port is not Type=notify"
    curl -fsS "http://127.0.0.1:$port/status" >/dev/null || fail "mmapd@$port active but its API does not answer"
    inside test -S "/run/mmapd/$port/admin.sock" || fail "mmapd@$port active but no admin socket"
    [ -n "$(unit_property "$port" StatusText)" ] || fail "mmapd@$port sent no STATUS="
    say "mmapd@$port active: $(unit_property "$port" StatusText)"
done
# /run inside the container is nspawn's tmpfs, not $root/run: look from inside.
check_mode() {
    local found
    found=$(inside stat -c '%a %U:%G' "$1")
    [ "$found" = "$2" ] || fail "$1 is $found, want $2"
}
check_mode /run/mmapd/3001 "750 mmapd:mmapd"
check_mode /run/mmapd/3001/admin.sock "660 mmapd:mmapd"
check_mode /var/lib/mmapd/3001 "700 mmapd:mmapd"
journal_of_this_run() { inside journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID="$(unit_property "$1" InvocationID)"; }
journal_of_this_run 3001 | grep -q 'running without a cluster secret' ||
    fail "no warning about the blank cluster-secret credential"
[ "$(unit_property 3001 LimitNOFILE)" = 65536 ] || fail "LimitNOFILE is $(unit_property 3001 LimitNOFILE), want 65536"
# The process gets LimitNOFILE= capped by the container's own hard limit (20000 under
# systemd-nspawn here), which still leaves the full 8192 client connections.
journal_of_this_run 3001 | grep 'connection limit derived' | grep -q 'client_connections=8192' ||
    fail "mmapd@3001 did not derive 8192 client connections from its descriptor limit"
status=$(curl -s -o /dev/null -w '%{http_code}' -X POST http://127.0.0.1:3001/raft/messages --data-binary x)
[ "$status" != 401 ] || fail "a peer request was refused for its secret, but no secret is configured"

# How a client reaches the three-instance cluster: plain HTTP until it moves to mutual TLS
# and tokens (below), then HTTPS with the cluster CA and a token. ccurl PORT PATH [args].
scheme=http
cluster_curl=()
ccurl() {
    local port=$1 path=$2
    shift 2
    curl -fsS --max-time 5 "${cluster_curl[@]}" "$@" "$scheme://127.0.0.1:$port$path"
}
healthy() { ccurl "$1" /health; }
for port in "${PORTS[@]}"; do
    wait_for 30 healthy "$port" || fail "mmapd@$port not healthy (no leader) within 30 s"
done

say "curl: set on 3001, get on 3002"
[ "$(curl -fsS -X POST http://127.0.0.1:3001/set/greeting -d value=hello)" = hello ] || fail "set on 3001"
[ "$(curl -fsS http://127.0.0.1:3002/get/greeting)" = hello ] || fail "get on 3002"
curl -fsS -X PUT http://127.0.0.1:3003/v1/kv/color --data-binary blue >/dev/null || fail "PUT on 3003"
[ "$(curl -fsS http://127.0.0.1:3001/v1/kv/color)" = blue ] || fail "GET /v1/kv on 3001"

leader_port() {
    local port
    for port in "${PORTS[@]}"; do
        if inside mmapd-admin --port "$port" status --json 2>/dev/null | grep -q '"state":"leader"'; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

say "mmapd-admin as root"
inside mmapd-admin --port 3001 status || fail "mmapd-admin status as root"
inside mmapd-admin --port 3001 msync || fail "mmapd-admin msync as root"
leader=$(leader_port) || fail "no leader found through mmapd-admin"
inside mmapd-admin --port "$leader" step-down || fail "mmapd-admin step-down as root on $leader"

say "mmapd-admin as alice (group mmapd)"
inside_as alice mmapd-admin --port 3002 status || fail "mmapd-admin status as a member of group mmapd"
inside_as alice mmapd-admin --port 3002 msync || fail "mmapd-admin msync as a member of group mmapd"
wait_for 20 leader_port || fail "no leader after step-down"
leader=$(leader_port)
inside_as alice mmapd-admin --port "$leader" step-down || fail "mmapd-admin step-down as alice on $leader"

say "mmapd-admin as bob (not in group mmapd) is refused"
if bob_out=$(inside_as bob mmapd-admin --port 3001 status 2>&1); then
    fail "mmapd-admin status succeeded for a user outside group mmapd: $bob_out"
fi
echo "$bob_out"
grep -q 'permission denied' <<<"$bob_out" || fail "bob was refused, but not with 'permission denied': $bob_out"

say "systemctl restart of all three keeps the data (now with a cluster secret)"
mkdir -p "$root/etc/mmapd"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$root/etc/mmapd/cluster-secret"
chmod 600 "$root/etc/mmapd/cluster-secret"
inside systemctl restart mmapd@3001 mmapd@3002 mmapd@3003 || fail "systemctl restart failed"
for port in "${PORTS[@]}"; do
    wait_for 30 healthy "$port" || fail "mmapd@$port not healthy after restart"
done
[ "$(curl -fsS http://127.0.0.1:3003/get/greeting)" = hello ] || fail "greeting lost by restart"
[ "$(curl -fsS http://127.0.0.1:3002/v1/kv/color)" = blue ] || fail "color lost by restart"
[ "$(curl -fsS -X POST http://127.0.0.1:3002/set/after -d value=secret)" = secret ] ||
    fail "no write with the cluster secret configured"
if journal_of_this_run 3001 | grep -q 'running without a cluster secret'; then
    fail "the cluster secret file was not used after the restart"
fi
status=$(curl -s -o /dev/null -w '%{http_code}' -X POST http://127.0.0.1:3001/raft/messages --data-binary x)
[ "$status" = 401 ] || fail "a peer request without the secret got HTTP $status, want 401"

# The README's openssl commands ("Security"): a CA, and a node certificate it signs.
pki="$run_dir/pki"
mkdir -p "$pki"
make_ca() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=$1" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        -keyout "$pki/$1.key" -out "$pki/$1.pem" 2>/dev/null
}
# make_node_cert CA NAME: NAME.pem and NAME.key, naming 127.0.0.1, signed by CA.
make_node_cert() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
        -keyout "$pki/$2.key" -out "$pki/$2.csr" 2>/dev/null
    printf '%s\n' subjectAltName=IP:127.0.0.1,DNS:localhost extendedKeyUsage=serverAuth,clientAuth \
        keyUsage=critical,digitalSignature basicConstraints=critical,CA:FALSE >"$pki/$2.ext"
    openssl x509 -req -in "$pki/$2.csr" -CA "$pki/$1.pem" -CAkey "$pki/$1.key" -CAcreateserial \
        -days 30 -extfile "$pki/$2.ext" -out "$pki/$2.pem" 2>/dev/null
}
# install_tls FILE NAME: FILE as /etc/mmapd/tls/NAME, root:mmapd 0640.
install_tls() {
    install -m 0640 "$1" "$root/etc/mmapd/tls/$2"
    inside chown root:mmapd "/etc/mmapd/tls/$2"
}
https_code() { # CA TOKEN URL-PATH [curl args]: the HTTP status over HTTPS, 000 if no answer
    local ca=$1 token=$2 path=$3
    shift 3
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$pki/$ca.pem" \
        -H "Authorization: Bearer $token" "$@" "https://127.0.0.1:${https_port:-3005}$path" || true
}

# ---- the three instances move to mutual TLS and tokens from /etc/mmapd/tls ----------

say "TLS: mmapd@3001-3003 restart with mutual TLS (a CA of the cluster's) and tokens"
check_mode /etc/mmapd/tls "750 root:mmapd"
make_ca e2e-cluster-ca || fail "openssl: the cluster CA"
make_node_cert e2e-cluster-ca cluster || fail "openssl: the cluster's node certificate"
install_tls "$pki/e2e-cluster-ca.pem" cluster-ca.pem
install_tls "$pki/cluster.pem" cluster.pem
install_tls "$pki/cluster.key" cluster.key
printf 'e2e-cluster-token write\ne2e-cluster-reader read\n' >"$pki/cluster-tokens"
install_tls "$pki/cluster-tokens" cluster-tokens
check_mode /etc/mmapd/tls/cluster.key "640 root:mmapd"
check_mode /etc/mmapd/tls/cluster-tokens "640 root:mmapd"
# Every member's own file (mmapd@3004 joins with the same later). The members all listen
# on 127.0.0.1, so one certificate naming 127.0.0.1 serves for each (a certificate
# names a host, not a port).
cluster_tls_conf='MMAPD_TLS_CERT=/etc/mmapd/tls/cluster.pem
MMAPD_TLS_KEY=/etc/mmapd/tls/cluster.key
MMAPD_TLS_CA=/etc/mmapd/tls/cluster-ca.pem
MMAPD_AUTH_TOKENS=/etc/mmapd/tls/cluster-tokens'
for port in "${PORTS[@]}"; do
    echo "$cluster_tls_conf" >"$root/etc/mmapd/$port.conf"
done
inside systemctl restart mmapd@3001 mmapd@3002 mmapd@3003 || fail "systemctl restart with TLS failed"
scheme=https
cluster_curl=(--cacert "$pki/e2e-cluster-ca.pem" -H "Authorization: Bearer e2e-cluster-token")
for port in "${PORTS[@]}"; do
    wait_for 30 healthy "$port" || fail "mmapd@$port not healthy over HTTPS after the restart with TLS"
    plain=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$port/health" || true)
    [ "$plain" = 400 ] || fail "plain HTTP on mmapd@$port got $plain, want 400"
done
[ "$(ccurl 3003 /get/greeting)" = hello ] || fail "greeting lost by the restart with TLS"
[ "$(ccurl 3001 /v1/kv/tls-cluster -X PUT --data-binary over-tls -o /dev/null -w '%{http_code}')" = 201 ] ||
    fail "PUT over HTTPS with the token through 3001"
for port in 3002 3003; do
    [ "$(ccurl "$port" /v1/kv/tls-cluster)" = over-tls ] || fail "the write through 3001 is not read over HTTPS on $port"
done
[ "$(https_port=3002 https_code e2e-cluster-ca no-such-token /v1/kv/tls-cluster)" = 401 ] || fail "a wrong token was not refused with 401"
[ "$(https_port=3002 https_code e2e-cluster-ca e2e-cluster-reader /v1/kv/tls-cluster -X PUT --data-binary x)" = 403 ] ||
    fail "a read token could write"
# A peer route without a peer certificate is refused before its body is read.
peer=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$pki/e2e-cluster-ca.pem" \
    -X POST https://127.0.0.1:3001/raft/messages --data-binary x || true)
case "$peer" in 401 | 403) ;; *) fail "a peer request without a peer certificate got HTTP $peer, want 401 or 403" ;; esac

say "systemctl reload (SIGHUP) of mmapd@3002 rereads its TLS files and tokens, and it serves on"
pid_before=$(unit_property 3002 MainPID)
inside systemctl reload mmapd@3002 || fail "systemctl reload failed"
reload_logged() { journal_of_this_run 3002 | grep -q 'TLS certificate, key and CAs reloaded'; }
wait_for 10 reload_logged || fail "mmapd@3002 did not log the TLS reload of systemctl reload"
journal_of_this_run 3002 | grep -q 'SIGHUP: tokens reloaded' || fail "mmapd@3002 did not log the tokens reload"
[ "$(unit_property 3002 MainPID)" = "$pid_before" ] || fail "systemctl reload restarted mmapd@3002"
[ "$(unit_property 3002 ActiveState)" = active ] || fail "mmapd@3002 not active after reload"
[ "$(ccurl 3002 /v1/kv/after-reload -X PUT --data-binary yes -o /dev/null -w '%{http_code}')" = 201 ] ||
    fail "PUT through 3002 after its reload"
[ "$(ccurl 3001 /v1/kv/after-reload)" = yes ] || fail "the write through the reloaded 3002 is not read on 3001"

# ---- TLS: mmapd@3005 serves HTTPS from /etc/mmapd/tls; systemctl reload swaps it ----

say "TLS: mmapd@3005 with its certificate, key and tokens in /etc/mmapd/tls"
check_mode /etc/mmapd/tls "750 root:mmapd"
make_ca e2e-ca-1 || fail "openssl: the first CA"
make_node_cert e2e-ca-1 node-1 || fail "openssl: the first node certificate"
install_tls "$pki/node-1.pem" node.pem
install_tls "$pki/node-1.key" node.key
printf 'e2e-token-one write\n' >"$pki/tokens"
install_tls "$pki/tokens" tokens
check_mode /etc/mmapd/tls/node.key "640 root:mmapd"
cat >"$root/etc/mmapd/3005.conf" <<'CONF'
MMAPD_PEERS=127.0.0.1:3005
MMAPD_TLS_CERT=/etc/mmapd/tls/node.pem
MMAPD_TLS_KEY=/etc/mmapd/tls/node.key
MMAPD_AUTH_TOKENS=/etc/mmapd/tls/tokens
CONF
inside systemctl start mmapd@3005 || fail "systemctl start mmapd@3005 (TLS) failed"
healthy_tls() { curl -fsS --max-time 5 --cacert "$pki/$1.pem" https://127.0.0.1:3005/health; }
wait_for 30 healthy_tls e2e-ca-1 || fail "mmapd@3005 does not answer HTTPS /health with the first CA"
[ "$(https_code e2e-ca-1 e2e-token-one /v1/kv/tls -X PUT --data-binary one)" = 201 ] ||
    fail "PUT over HTTPS with the token"
[ "$(https_code e2e-ca-1 no-such-token /v1/kv/tls)" = 401 ] || fail "a wrong token was not refused with 401"
plain=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:3005/health || true)
[ "$plain" = 400 ] || fail "plain HTTP on the TLS port got $plain, want 400"

say "TLS: a new certificate (of a new CA) and new tokens, then systemctl reload mmapd@3005"
make_ca e2e-ca-2 || fail "openssl: the second CA"
make_node_cert e2e-ca-2 node-2 || fail "openssl: the second node certificate"
install_tls "$pki/node-2.pem" node.pem
install_tls "$pki/node-2.key" node.key
printf 'e2e-token-two write\n' >"$pki/tokens"
install_tls "$pki/tokens" tokens
pid_before=$(unit_property 3005 MainPID)
inside systemctl reload mmapd@3005 || fail "systemctl reload mmapd@3005 failed"
tls_reloaded() { journal_of_this_run 3005 | grep -q 'TLS certificate, key and CAs reloaded'; }
wait_for 10 tls_reloaded || fail "mmapd@3005 did not log the TLS reload"
[ "$(unit_property 3005 MainPID)" = "$pid_before" ] || fail "systemctl reload restarted mmapd@3005"
[ "$(https_code e2e-ca-2 e2e-token-two /v1/kv/tls)" = 200 ] ||
    fail "after reload, the new CA and the new token do not get through"
[ "$(https_code e2e-ca-1 e2e-token-two /v1/kv/tls)" = 000 ] || fail "after reload, the old certificate is still served"
[ "$(https_code e2e-ca-2 e2e-token-one /v1/kv/tls)" = 401 ] || fail "after reload, the removed token still works"
[ "$(curl -sS --max-time 5 --cacert "$pki/e2e-ca-2.pem" -H 'Authorization: Bearer e2e-token-two' \
    https://127.0.0.1:3005/v1/kv/tls)" = one ] || fail "the value written before the reload is not read back"

say "TLS: a key that does not go with the certificate is refused on reload; the node serves on"
install_tls "$pki/node-1.key" node.key
inside systemctl reload mmapd@3005 || fail "systemctl reload mmapd@3005 (bad key) failed"
tls_refused() { journal_of_this_run 3005 | grep 'a TLS file is refused' | grep -q /etc/mmapd/tls/node.key; }
wait_for 10 tls_refused || fail "mmapd@3005 did not log the refused key, naming it"
[ "$(https_code e2e-ca-2 e2e-token-two /health)" = 200 ] || fail "mmapd@3005 stopped serving after a bad key"
[ "$(unit_property 3005 ActiveState)" = active ] || fail "mmapd@3005 not active after a bad key"
for key in node-1 node-2; do
    if journal_of_this_run 3005 | grep -qF -f <(grep -v -- ----- "$pki/$key.key"); then
        fail "a line of $key.key is in the journal"
    fi
done
if journal_of_this_run 3005 | grep -q 'e2e-token-'; then fail "a token is in the journal"; fi
inside systemctl stop mmapd@3005 || fail "systemctl stop mmapd@3005"

say "systemctl stop ends with result success"
inside systemctl stop mmapd@3003 || fail "systemctl stop failed"
[ "$(unit_property 3003 Result)" = success ] || fail "stop result is $(unit_property 3003 Result)"
[ "$(unit_property 3003 ExecMainStatus)" = 0 ] || fail "exit status $(unit_property 3003 ExecMainStatus)"
[ -d "$root/var/lib/mmapd/3003" ] || fail "stop removed the data directory"
inside test ! -e /run/mmapd/3003 || fail "stop left /run/mmapd/3003"
inside test -S /run/mmapd/3001/admin.sock || fail "stopping 3003 removed 3001's socket"
inside systemctl start mmapd@3003 || fail "start after stop"

say "systemctl kill -s KILL: systemd restarts the node"
pid_before=$(unit_property 3001 MainPID)
restarts_before=$(unit_property 3001 NRestarts)
inside systemctl kill -s KILL mmapd@3001 || fail "systemctl kill -s KILL"
restarted() {
    [ "$(unit_property 3001 NRestarts)" -gt "$restarts_before" ] &&
        [ "$(unit_property 3001 ActiveState)" = active ] &&
        [ "$(unit_property 3001 MainPID)" != "$pid_before" ]
}
wait_for 30 restarted || fail "mmapd@3001 was not restarted after SIGKILL"
say "mmapd@3001: pid $pid_before killed, now $(unit_property 3001 MainPID)"
wait_for 30 healthy 3001 || fail "mmapd@3001 not healthy after its restart"
[ "$(ccurl 3001 /get/after)" = secret ] || fail "data lost after SIGKILL"

say "a stalled event loop trips the watchdog (WatchdogSec=2s drop-in, SIGSTOP)"
mkdir -p "$root/etc/systemd/system/mmapd@3002.service.d"
printf '[Service]\nWatchdogSec=2s\n' >"$root/etc/systemd/system/mmapd@3002.service.d/watchdog.conf"
inside systemctl daemon-reload
inside systemctl restart mmapd@3002 || fail "restart with the watchdog drop-in"
[ "$(unit_property 3002 WatchdogUSec)" = 2s ] || fail "drop-in not applied: $(unit_property 3002 WatchdogUSec)"
sleep 4 # several watchdog periods: a healthy node keeps feeding it
restarts_before=$(unit_property 3002 NRestarts)
pid_before=$(unit_property 3002 MainPID)
[ "$(unit_property 3002 ActiveState)" = active ] || fail "mmapd@3002 did not survive 4 s of WatchdogSec=2s"
inside systemctl kill --kill-who=main -s STOP mmapd@3002 || fail "SIGSTOP to mmapd@3002"
restarted_2() {
    [ "$(unit_property 3002 NRestarts)" -gt "$restarts_before" ] &&
        [ "$(unit_property 3002 ActiveState)" = active ]
}
wait_for 40 restarted_2 || fail "the watchdog did not restart the stopped mmapd@3002"
inside journalctl --no-pager -u mmapd@3002 | grep -E "Watchdog timeout|result 'watchdog'" ||
    fail "no watchdog timeout in the journal"
rm -r "$root/etc/systemd/system/mmapd@3002.service.d"
inside systemctl daemon-reload

say "systemd-analyze verify mmapd@3001.service (inside the container; --man=no: no man-db there)"
verify=$(inside systemd-analyze verify --man=no mmapd@3001.service 2>&1) || fail "systemd-analyze verify failed: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify printed: $verify"

say "systemd-analyze security mmapd@3001.service (inside the container)"
security=$(inside systemd-analyze security --no-pager mmapd@3001.service 2>&1) || true
echo "$security"
exposure=$(sed -n 's/.*Overall exposure level for mmapd@3001.service: \([0-9.]*\).*/\1/p' <<<"$security")
[ -n "$exposure" ] || fail "no exposure level in systemd-analyze security's output"
awk -v e="$exposure" 'BEGIN { exit !(e <= 1.5) }' || fail "exposure level $exposure is above 1.5"

# ---- membership: mmapd@3004 joins, mmapd@3001 is removed, a client writes throughout --

# The members as sorted "address role" lines, from PORT's `mmapd-admin member list --json`
# (members are flat objects: each {...} with no brace inside is one).
members_of() {
    local json objects
    json=$(inside mmapd-admin --port "$1" member list --json) || return 1
    objects=$(grep -o '{[^{}]*}' <<<"$json") || return 1
    paste -d' ' <(sed -E 's/.*"address":"([^"]*)".*/\1/' <<<"$objects") \
        <(sed -E 's/.*"role":"([^"]*)".*/\1/' <<<"$objects") | sort
}
has_members() { [ "$(members_of "$1")" = "$2" ]; }
lists_voter() { members_of "$1" | grep -qx "$2 voter"; }

# The client runs on the host (same network): it writes e2e-w<n> = v<n>, n = 1, 2, ...,
# until $stop_file exists, each write through the next port of $write_ports_file (read
# before every attempt). A failed attempt (curl gives up after 3 s) is logged in
# $failures_file and retried, same key and value, through the next port 0.1 s later. An
# acknowledged write (200 or 201) is appended to $acked_file as "key value nanoseconds".
acked_file="$run_dir/acked"
failures_file="$run_dir/write-failures"
write_ports_file="$run_dir/write-ports"
stop_file="$run_dir/stop-writing"
writer() {
    set +e
    local n=0 turn=0 key code ports
    while [ ! -e "$stop_file" ]; do
        n=$((n + 1))
        key=$(printf 'e2e-w%06d' "$n")
        while :; do
            read -r -a ports <"$write_ports_file"
            turn=$(((turn + 1) % ${#ports[@]}))
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "${cluster_curl[@]}" -X PUT \
                "$scheme://127.0.0.1:${ports[$turn]}/v1/kv/$key" --data-binary "v$n")
            case "$code" in 200 | 201) break ;; esac
            echo "$(date +%T.%N) $key through ${ports[$turn]}: HTTP $code" >>"$failures_file"
            [ ! -e "$stop_file" ] || return 0
            sleep 0.1
        done
        echo "$key v$n $(date +%s%N)" >>"$acked_file"
        sleep 0.05
    done
}
write_through() { echo "$*" >"$write_ports_file.new" && mv "$write_ports_file.new" "$write_ports_file"; }
acked_count() { wc -l <"$acked_file"; }
# Waits until $1 more writes than now are acknowledged, for at most 15 s.
more_acked() {
    local target deadline
    target=$(($(acked_count) + $1))
    deadline=$(($(date +%s) + 15))
    while [ "$(acked_count)" -lt "$target" ]; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "writes stalled: $(acked_count) acknowledged, waited for $target"
        sleep 0.2
    done
}

say "membership: a client writes continuously through the members"
: >"$acked_file"
: >"$failures_file"
write_through 3001 3002 3003
writer &
writer_pid=$!
more_acked 20

say "mmapd@3004 joins (MMAPD_JOIN in /etc/mmapd/3004.conf)"
# /etc/default/mmapd sets MMAPD_PEERS for every instance; MMAPD_JOIN in the instance's
# own file wins over it. It joins over mutual TLS, with the cluster's files.
printf 'MMAPD_JOIN=%s\n%s\n' "$PEERS" "$cluster_tls_conf" >"$root/etc/mmapd/3004.conf"
inside systemctl start mmapd@3004 || fail "systemctl start mmapd@3004 failed"
wait_for 30 lists_voter 3001 127.0.0.1:3004 ||
    fail "127.0.0.1:3004 not a voter within 30 s; members: $(members_of 3001 | tr '\n' ',')"
four=$(printf '127.0.0.1:%s voter\n' 3001 3002 3003 3004)
wait_for 10 has_members 3004 "$four" || fail "3004 lists $(members_of 3004 | tr '\n' ','), want four voters"
say "members: $(members_of 3001 | tr '\n' ',') after $(acked_count) writes"
[ "$(ccurl 3004 /get/greeting)" = hello ] || fail "greeting not read through 3004"
[ "$(ccurl 3004 /v1/kv/e2e-w000001)" = v1 ] || fail "e2e-w000001 not read through 3004"
[ "$(ccurl 3004 '/v1/kv/color?consistency=stale')" = blue ] ||
    fail "color not in 3004's own copy"
write_through 3002 3003 3004
more_acked 20

say "mmapd-admin member remove 127.0.0.1:3001 (leader: mmapd@$(leader_port || echo none))"
restarts_before=$(unit_property 3001 NRestarts)
inside mmapd-admin --port 3002 member remove 127.0.0.1:3001 || fail "mmapd-admin member remove 127.0.0.1:3001"
ended_with_10() {
    [ "$(unit_property 3001 ActiveState)" = failed ] && [ "$(unit_property 3001 ExecMainStatus)" = 10 ]
}
wait_for 20 ended_with_10 || fail "mmapd@3001 did not end with exit status 10 within 20 s: $(
    inside systemctl show -p ActiveState,Result,ExecMainStatus mmapd@3001.service | tr '\n' ' ')"
[ "$(unit_property 3001 Result)" = exit-code ] || fail "mmapd@3001 result $(unit_property 3001 Result)"
[ -e "$root/var/lib/mmapd/3001/REMOVED" ] || fail "the removed node left no REMOVED in its data directory"
three=$(printf '127.0.0.1:%s voter\n' 3002 3003 3004)
for port in 3002 3003 3004; do
    wait_for 10 has_members "$port" "$three" ||
        fail "$port lists $(members_of "$port" | tr '\n' ','), want 3002, 3003, 3004 as voters"
done
sleep 4 # RestartSec=1s and more: Restart=on-failure must not bring it back
[ "$(unit_property 3001 ActiveState)" = failed ] || fail "mmapd@3001 is $(unit_property 3001 ActiveState) again"
[ "$(unit_property 3001 NRestarts)" = "$restarts_before" ] || fail "systemd restarted the removed mmapd@3001"
say "mmapd@3001 ended: $(inside systemctl show -p ActiveState,Result,ExecMainStatus mmapd@3001.service | tr '\n' ' ')"
if inside systemctl start mmapd@3001 2>/dev/null; then
    fail "systemctl start of the removed mmapd@3001 succeeded"
fi
[ "$(unit_property 3001 ExecMainStatus)" = 10 ] ||
    fail "the removed mmapd@3001 started again and exited $(unit_property 3001 ExecMainStatus), want 10"
more_acked 20

say "the client stops; every acknowledged write reads back from 3002, 3003 and 3004"
touch "$stop_file"
wait "$writer_pid" || true
writer_pid=""
failed_attempts=$(wc -l <"$failures_file")
longest_ms=$(awk 'NR > 1 { gap = $3 - last; if (gap > most) most = gap } { last = $3 } END { printf "%d", most / 1e6 }' "$acked_file")
say "client: $(acked_count) writes acknowledged, $failed_attempts failed attempts, longest gap between acknowledgements ${longest_ms} ms"
head -n 20 "$failures_file"
[ "$longest_ms" -le 5000 ] || fail "writes stopped for $longest_ms ms"
cut -d' ' -f1,2 "$acked_file" | sort >"$run_dir/acked.sorted"
# PORT's pairs "key value" under e2e-w, sorted; $2 is the read consistency.
stored_pairs() {
    local json objects
    json=$(ccurl "$1" "/v1/kv?prefix=e2e-w&limit=10000&consistency=$2") || return 1
    grep -q '"more":false' <<<"$json" || return 1
    objects=$(grep -o '{[^{}]*}' <<<"$json") || return 1
    paste -d' ' <(sed -E 's/.*"key":"([^"]*)".*/\1/' <<<"$objects") \
        <(sed -E 's/.*"value":"([^"]*)".*/\1/' <<<"$objects") | sort
}
holds_every_ack() {
    stored_pairs "$1" "$2" >"$run_dir/stored.$1" || return 1
    [ -z "$(comm -23 "$run_dir/acked.sorted" "$run_dir/stored.$1")" ]
}
holds_every_ack 3003 linearizable || fail "a linearizable list through 3003 lacks $(comm -23 "$run_dir/acked.sorted" "$run_dir/stored.3003" | wc -l) acknowledged writes, e.g. $(comm -23 "$run_dir/acked.sorted" "$run_dir/stored.3003" | head -n 3 | tr '\n' ',')"
for port in 3002 3003 3004; do
    wait_for 10 holds_every_ack "$port" stale ||
        fail "$port's own copy lacks $(comm -23 "$run_dir/acked.sorted" "$run_dir/stored.$port" | wc -l) acknowledged writes, e.g. $(comm -23 "$run_dir/acked.sorted" "$run_dir/stored.$port" | head -n 3 | tr '\n' ',')"
done
PORTS=(3002 3003 3004)

say "all three members still active; stopping"
for port in "${PORTS[@]}"; do
    [ "$(unit_property "$port" ActiveState)" = active ] || fail "mmapd@$port is not active at the end"
done
inside systemctl stop mmapd@3002 mmapd@3004
for port in 3002 3004; do
    [ "$(unit_property "$port" Result)" = success ] || fail "mmapd@$port stop result $(unit_property "$port" Result)"
done

say "dpkg -r stops the last instance and keeps the data; dpkg -P deletes it"
inside dpkg -r mmapd >/dev/null || fail "dpkg -r mmapd"
[ "$(unit_property 3003 ActiveState)" = inactive ] || fail "prerm left mmapd@3003 $(unit_property 3003 ActiveState)"
[ -d "$root/var/lib/mmapd/3003" ] || fail "dpkg -r removed /var/lib/mmapd"
[ -f "$root/etc/default/mmapd" ] || fail "dpkg -r removed the conffile /etc/default/mmapd"
inside dpkg -P mmapd >/dev/null || fail "dpkg -P mmapd"
[ ! -e "$root/var/lib/mmapd" ] || fail "dpkg -P left /var/lib/mmapd"
[ -f "$root/etc/mmapd/tls/node.key" ] || fail "dpkg -P deleted /etc/mmapd/tls with keys in it"
outcome=PASS
