# Daemon sections of scripts/bench (QUALITY.md P3-P8); sourced by scripts/bench, not run on its own.
# Uses the helpers defined there: log, fail, free_port, wait_port, run_load, PIDS, WORK, CATWALK_BIN,
# LOAD_BIN, NODE, PY, DEPS, ROOT. Every section starts its own daemon on a fresh data dir (start_daemon),
# prints one table, and records errors with `fail` (never for a slow number).

BENCH_PUSH_MB="${BENCH_PUSH_MB:-50}"
BENCH_PUSH_RUNS="${BENCH_PUSH_RUNS:-3}"
BENCH_APPS="${BENCH_APPS:-100}"
BENCH_WAKE_RUNS="${BENCH_WAKE_RUNS:-10}"
BENCH_HOLD_SESSIONS="${BENCH_HOLD_SESSIONS:-1000}"
BENCH_P8_SHARED="${BENCH_P8_SHARED:-1}"
BENCH_P3_ROUNDS="${BENCH_P3_ROUNDS:-2}"
TIMING="$ROOT/benches/mcp_timing.py"
ECHO_SERVER="$ROOT/scripts/echo_server.py"

# ---- shared pieces --------------------------------------------------------------------------------
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.com
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.com

CLIENT_KEY=""
# The SSH key every push uses (catwalk admin key and sshd authorized key); sets GIT_SSH_COMMAND.
ensure_client_key() {
    [[ -n "$CLIENT_KEY" ]] && return 0
    CLIENT_KEY="$WORK/client"
    ssh-keygen -q -t ed25519 -N '' -C bench -f "$CLIENT_KEY"
    export GIT_SSH_COMMAND="ssh -F /dev/null -i $CLIENT_KEY -o IdentitiesOnly=yes -o BatchMode=yes \
-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
}

# start_daemon NAME CONFIG_TOML: `catwalk init` + `catwalk serve` on a fresh data dir $WORK/NAME with
# CONFIG_TOML as its whole config file (request logging off). Sets DAEMON_DIR, DAEMON_PID (the catwalk
# process itself, for /proc/PID/status), DAEMON_HTTP (http://ADDR) and DAEMON_SSH_PORT.
DAEMON_DIR="" DAEMON_PID="" DAEMON_HTTP="" DAEMON_SSH_PORT=""
start_daemon() {
    local name="$1" config="$2" logf="$WORK/$1.log" i http="" ssh=""
    ensure_client_key
    DAEMON_DIR="$WORK/$name"
    "$CATWALK_BIN" init --dir "$DAEMON_DIR" --admin-key "$CLIENT_KEY.pub" >/dev/null 2>"$WORK/$name-init.log" \
        || { fail "catwalk init failed: $(tail -3 "$WORK/$name-init.log" | tr '\n' ' ')"; return 1; }
    printf '[daemon]\nlog = "warn,catwalk::daemon=info"\n\n%s\n' "$config" >"$DAEMON_DIR/catwalk.toml"
    setsid "$CATWALK_BIN" serve --dir "$DAEMON_DIR" --ssh-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
        >/dev/null 2>"$logf" &
    DAEMON_PID=$!
    PIDS+=("$DAEMON_PID")
    disown "$DAEMON_PID"
    for ((i = 0; i < 300; i++)); do
        http="$(sed 's/\x1b\[[0-9;]*m//g' "$logf" 2>/dev/null | grep -o 'http listening on [0-9.:]*' | head -1 | cut -d' ' -f4 || true)"
        ssh="$(sed 's/\x1b\[[0-9;]*m//g' "$logf" 2>/dev/null | grep -o 'ssh listening on [0-9.:]*' | head -1 | cut -d' ' -f4 || true)"
        [[ -n "$http" && -n "$ssh" ]] && break
        kill -0 "$DAEMON_PID" 2>/dev/null \
            || { fail "catwalk serve exited: $(tail -3 "$logf" | tr '\n' ' ')"; return 1; }
        sleep 0.1
    done
    [[ -n "$http" && -n "$ssh" ]] || { fail "catwalk serve did not log its listen addresses within 30 s"; return 1; }
    DAEMON_HTTP="http://$http"
    DAEMON_SSH_PORT="${ssh##*:}"
    [[ "$(cat "/proc/$DAEMON_PID/comm" 2>/dev/null)" == catwalk ]] \
        || { fail "pid $DAEMON_PID is not the catwalk process"; return 1; }
}

# token APP: prints a fresh access token for APP of the running daemon.
token() {
    "$CATWALK_BIN" --dir "$DAEMON_DIR" tokens create "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}

# rss_kb PID: resident set size in kB (VmRSS of /proc/PID/status).
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
# children PID: how many processes the daemon has started that are still running.
children() { pgrep -c -P "$1" || true; }

# make_fixture_repo DIR: a deployable repository (catwalk.toml + the dependency-free echo server).
make_fixture_repo() {
    git init -q -b main "$1"
    cp "$ECHO_SERVER" "$1/server.py"
    printf '[server]\nlanguage = "python"\ncommand = ["python", "server.py"]\n' >"$1/catwalk.toml"
    git -C "$1" add -A
    git -C "$1" commit -q -m "echo server"
}

cw_remote() { echo "ssh://git@127.0.0.1:$DAEMON_SSH_PORT/$1"; }

# start_sshd: OpenSSH sshd on a loopback port with its own host key, config and authorized_keys (the
# client key), for `git receive-pack` into bare repositories. Sets SSHD_PORT and SSHD_USER.
SSHD_PORT="" SSHD_USER="" SSHD_PID=""
start_sshd() {
    local d="$WORK/sshd" i
    [[ -n "$SSHD_PID" ]] && kill -0 "$SSHD_PID" 2>/dev/null && return 0
    rm -rf "$d"
    [[ -x /usr/sbin/sshd ]] || { fail "/usr/sbin/sshd is missing (run ./scripts/test-deps: Debian openssh-server)"; return 1; }
    ensure_client_key
    mkdir -p "$d" /run/sshd 2>/dev/null || true
    ssh-keygen -q -t ed25519 -N '' -f "$d/host_key"
    cp "$CLIENT_KEY.pub" "$d/authorized_keys"
    chmod 600 "$d/authorized_keys"
    local port
    port="$(free_port)"
    cat >"$d/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $d/host_key
PidFile $d/sshd.pid
AuthorizedKeysFile $d/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
LogLevel ERROR
CONF
    setsid /usr/sbin/sshd -D -e -f "$d/sshd_config" 2>"$WORK/sshd.log" &
    local pid=$!
    SSHD_PID=$pid
    PIDS+=("$pid")
    disown "$pid"
    SSHD_USER="$(id -un)"
    for ((i = 0; i < 300; i++)); do
        # shellcheck disable=SC2086
        $GIT_SSH_COMMAND -p "$port" "$SSHD_USER@127.0.0.1" true 2>/dev/null && { SSHD_PORT="$port"; return 0; }
        kill -0 "$pid" 2>/dev/null || { fail "sshd exited: $(tail -3 "$WORK/sshd.log" | tr '\n' ' ')"; return 1; }
        sleep 0.1
    done
    fail "sshd did not accept a login within 30 s"
    return 1
}

now_ms() { date +%s%3N; }

# The python3 interpreter itself (not a pyenv/asdf shim, which would add its own start-up to every spawn).
real_python3() { python3 -c 'import sys; print(sys.executable)'; }

# ---- P3: HTTP upstream proxy ---------------------------------------------------------------------
section_p3() {
    local results="$WORK/results-p3.jsonl" port upstream tok
    : >"$results"
    port="$(free_port)"
    PORT="$port" setsid "$NODE" "$DEPS/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js" \
        streamableHttp >"$WORK/everything-http.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    disown "$pid"
    wait_port "$port" "$pid" everything-http || return 0
    upstream="http://127.0.0.1:$port/mcp"
    start_daemon p3 "$(printf '[gateway]\nrate_limit_per_minute = 0\n\n[apps.upstream]\nurl = "%s"\n' "$upstream")" \
        || return 0
    tok="$(token upstream)" || { fail "tokens create upstream failed"; return 0; }
    # One unmeasured run warms the upstream (node's JIT) so that whichever target goes first is not
    # penalised; then BENCH_P3_ROUNDS rounds, alternating which target goes first, medians per target.
    BENCH_DURATION=3 run_load warm-up "$WORK/p3-warm.jsonl" --url "$upstream"
    local round first second load
    for ((round = 1; round <= BENCH_P3_ROUNDS; round++)); do
        for load in 8x32 1x1; do
            first=direct second=catwalk
            ((round % 2)) || { first=catwalk second=direct; }
            for t in "$first" "$second"; do
                local sessions=$BENCH_SESSIONS inflight=$BENCH_INFLIGHT args=(--url "$upstream")
                [[ "$load" == 1x1 ]] && sessions=1 inflight=1
                [[ "$t" == catwalk ]] && args=(--url "$DAEMON_HTTP/mcp/upstream" --token "$tok")
                RUN_SESSIONS=$sessions RUN_INFLIGHT=$inflight run_load "$t-$load-$round" "$results" "${args[@]}"
            done
        done
    done
    python3 - "$results" "$BENCH_SESSIONS" "$BENCH_INFLIGHT" "$BENCH_P3_ROUNDS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
many = f"{sys.argv[2]}x{sys.argv[3]}"
def med(target, load, key):
    vals = [r[key] for r in rows if not r.get("failed") and r["label"].startswith(f"{target}-{load}-")]
    return statistics.median(vals) if vals else None
print(f"\nP3 /mcp/APP in front of an HTTP upstream (server-everything streamableHttp), tools/call echo, medians of {sys.argv[4]} rounds")
print(f"{'target':<10}{'load':>7}{'req/s':>10}{'p50 us':>10}{'p99 us':>10}{'errors':>8}{'req/s vs direct':>17}{'added p50 us':>14}")
for load, label in (("8x32", many), ("1x1", "1x1")):
    base = med("direct", load, "rps"), med("direct", load, "p50_us")
    for t in ("direct", "catwalk"):
        rps, p50, p99, err = (med(t, load, k) for k in ("rps", "p50_us", "p99_us", "errors"))
        if rps is None:
            print(f"{t:<10}{label:>7}{'failed':>10}")
            continue
        ratio = f"{rps / base[0]:.2f}x" if t != "direct" and base[0] else "-"
        added = f"{p50 - base[1]:+.0f}" if t != "direct" and base[1] is not None else "-"
        print(f"{t:<10}{label:>7}{rps:>10.0f}{p50:>10.0f}{p99:>10.0f}{err:>8.0f}{ratio:>17}{added:>14}")
print("(bars: QUALITY.md P3, >= 0.85x direct req/s (the %s rows), <= 100 us added at p50 (the 1x1 rows))" % many)
PY
}

# ---- P4: git push of a large repository vs OpenSSH ------------------------------------------------
section_p4() {
    local src="$WORK/p4-src" results="$WORK/results-p4.jsonl" run i
    : >"$results"
    log "P4: generating a ${BENCH_PUSH_MB} MB repository (random, incompressible)"
    make_fixture_repo "$src"
    for ((i = 1; i <= BENCH_PUSH_MB; i++)); do head -c 1048576 /dev/urandom >"$src/blob$i.bin"; done
    git -C "$src" add -A && git -C "$src" commit -q -m "bench payload"
    start_sshd || return 0
    start_daemon p4 "" || return 0
    mkdir -p "$WORK/p4-bare"
    # p4_push TARGET RUN: one timed push of the whole repository to an empty repository; one JSON line.
    p4_push() {
        local target="$1" run="$2" t0 t1 url
        if [[ "$target" == sshd ]]; then
            git init -q --bare "$WORK/p4-bare/r$run.git"
            url="ssh://$SSHD_USER@127.0.0.1:$SSHD_PORT$WORK/p4-bare/r$run.git"
        else
            url="$(cw_remote "p4-$run")"
        fi
        t0="$(now_ms)"
        if ! git -C "$src" push -q "$url" main 2>"$WORK/p4-push.err"; then
            fail "push to $target failed: $(tail -5 "$WORK/p4-push.err" | tr '\n' ' ')"
            return 1
        fi
        t1="$(now_ms)"
        local deploy=0
        if [[ "$target" == catwalk ]]; then
            deploy="$("$CATWALK_BIN" --dir "$DAEMON_DIR" releases "p4-$run" --json \
                | python3 -c 'import json,sys; r=json.load(sys.stdin)[-1]; print(sum(t["ms"] for t in r["timings_ms"]))')" \
                || { fail "releases p4-$run --json failed"; return 1; }
        fi
        echo "{\"target\":\"$target\",\"run\":\"$run\",\"ms\":$((t1 - t0)),\"deploy_ms\":$deploy}" >>"$results"
        log "P4 push $target run $run: $((t1 - t0)) ms"
    }
    p4_push catwalk warm && p4_push sshd warm || return 0
    for ((run = 1; run <= BENCH_PUSH_RUNS; run++)); do
        # Alternate which goes first so a noisy neighbour does not always hit the same side.
        if ((run % 2)); then p4_push catwalk "$run" && p4_push sshd "$run"; else p4_push sshd "$run" && p4_push catwalk "$run"; fi \
            || return 0
    done

    python3 - "$results" "$BENCH_PUSH_MB" <<'PY'
import json, statistics, sys
rows = [r for r in (json.loads(l) for l in open(sys.argv[1]) if l.strip()) if r["run"] != "warm"]
med = lambda t, k="ms": statistics.median(r[k] for r in rows if r["target"] == t)
cw, ss, dep = med("catwalk"), med("sshd"), med("catwalk", "deploy_ms")
n = sum(1 for r in rows if r["target"] == "sshd")
print(f"\nP4 git push of a {sys.argv[2]} MB repository (random files + catwalk.toml + echo server), {n} runs each, alternating")
print(f"{'target':<34}{'median ms':>10}{'runs ms':>30}")
for t, label in (("sshd", "OpenSSH sshd + git receive-pack"), ("catwalk", "catwalk (push incl. deploy)")):
    print(f"{label:<34}{med(t):>10.0f}{' '.join(str(r['ms']) for r in rows if r['target'] == t):>30}")
print(f"{'  of which deploy (timings_ms)':<34}{dep:>10.0f}")
print(f"{'catwalk minus its deploy':<34}{cw - dep:>10.0f}")
print(f"ratio catwalk/sshd: {cw / ss:.2f}x incl. deploy, {(cw - dep) / ss:.2f}x transfer only (bar: QUALITY.md P4, <= 1.15x)")
PY
}

# ---- P5: push-to-live with the package already installed -------------------------------------------
section_p5() {
    local src="$WORK/p5-src" results="$WORK/results-p5.jsonl" tok run line cmd
    : >"$results"
    start_sshd || return 0
    start_daemon p5 "$(printf '[gateway]\nrate_limit_per_minute = 0\n')" || return 0
    git init -q -b main "$src"
    printf '[server]\npackage = "pypi:mcp-server-time==2026.10.10"\nargs = ["--local-timezone", "UTC"]\n' >"$src/catwalk.toml"
    git -C "$src" add -A && git -C "$src" commit -q -m "time server"
    log "P5: first push of pypi:mcp-server-time (installs; not measured)"
    git -C "$src" push -q "$(cw_remote time)" main 2>"$WORK/p5-first.err" \
        || { fail "first push of mcp-server-time failed: $(tail -5 "$WORK/p5-first.err" | tr '\n' ' ')"; return 0; }
    tok="$(token time)" || { fail "tokens create time failed"; return 0; }
    git init -q --bare "$WORK/p5-bare.git"
    git -C "$src" push -q "ssh://$SSHD_USER@127.0.0.1:$SSHD_PORT$WORK/p5-bare.git" main 2>/dev/null \
        || { fail "push to sshd failed"; return 0; }
    # The server's own start-up is timed on the installed console script, spawned directly.
    cmd="$(ls -d "$DAEMON_DIR"/installs/*/venv/bin/mcp-server-time 2>/dev/null | head -1 || true)"
    [[ -x "$cmd" ]] || { fail "cannot find the installed mcp-server-time under $DAEMON_DIR/installs"; return 0; }
    for ((run = 0; run <= BENCH_PUSH_RUNS; run++)); do # run 0 is a warm-up
        line="$("$PY" "$TIMING" push-to-live --repo "$src" --remote "$(cw_remote time)" \
            --url "$DAEMON_HTTP/mcp/time" --token "$tok" 2>"$WORK/p5-run.err")" \
            || { fail "P5 run $run: $(tail -3 "$WORK/p5-run.err" | tr '\n' ' ')"; return 0; }
        # The same new commit over OpenSSH: the git transfer (and SSH handshake) without catwalk.
        local t0 t1
        t0="$(now_ms)"
        git -C "$src" push -q "ssh://$SSHD_USER@127.0.0.1:$SSHD_PORT$WORK/p5-bare.git" HEAD:main 2>/dev/null \
            || { fail "push to sshd failed"; return 0; }
        t1="$(now_ms)"
        local timings start
        timings="$("$CATWALK_BIN" --dir "$DAEMON_DIR" releases time --json | python3 -c 'import json,sys
r = max(json.load(sys.stdin), key=lambda r: r["version"])
print(json.dumps({t["step"]: t["ms"] for t in r["timings_ms"]}))')" \
            || { fail "releases time --json failed"; return 0; }
        start="$(python3 "$TIMING" start --runs 1 -- "$cmd" --local-timezone UTC 2>"$WORK/p5-run.err")" \
            || { fail "timing mcp-server-time's own start-up failed: $(tail -3 "$WORK/p5-run.err" | tr '\n' ' ')"; return 0; }
        [[ $run -eq 0 ]] || echo "{\"run\":$line,\"git_ms\":$((t1 - t0)),\"steps\":$timings,\"start\":$start}" >>"$results"
        log "P5 run $run$([[ $run -eq 0 ]] && echo ' (warm-up)'): $(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("push %.0f ms, first tools/call at %.0f ms" % (d["push_ms"], d["total_ms"]))' "$line"), sshd $((t1 - t0)) ms, steps $timings, start-up $start"
    done

    python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
if not rows:
    print("\nP5: no measured run"); sys.exit(0)
med = lambda f: statistics.median(f(r) for r in rows)
total, push = med(lambda r: r["run"]["total_ms"]), med(lambda r: r["run"]["push_ms"])
after = med(lambda r: r["run"]["total_ms"] - r["run"]["push_ms"])
git, start = med(lambda r: r["git_ms"]), med(lambda r: r["start"]["median_ms"])
steps = {k: med(lambda r, k=k: r["steps"].get(k, 0)) for k in ("analyse", "install", "health")}
own_push = med(lambda r: r["run"]["push_ms"] - r["steps"].get("health", 0))
row = lambda label, v: print(f"{label:<70}{v:>8.0f}")
print(f"\nP5 push-to-live, pypi:mcp-server-time already installed, {len(rows)} runs (medians, ms)")
row("git push start -> first successful tools/call get_current_time", total)
row("  git push (deploy steps: analyse %.0f, install %.0f, health gate %.0f)" % (steps["analyse"], steps["install"], steps["health"]), push)
row("  after the push: initialize (wakes the server) + tools/call", after)
row("same commit pushed to OpenSSH sshd (git transfer + ssh)", git)
row("server start-up alone (spawn -> initialize answered over stdio)", start)
row("catwalk in the push: push - health gate (incl. ssh + git transfer)", own_push)
row("catwalk share (push - health gate + after the push; an upper bound)", own_push + after)
row("total - server start-up (all but the bare server, incl. transfer)", total - start)
print("(the health gate starts the server once, and that process then waits for a 2026-07-28 client; the")
print(" session's initialize reaches the warm spare started beside it; the sshd row is the same transfer")
print(" through OpenSSH, for reference; bars: QUALITY.md P5, total <= 2000 ms, catwalk share <= 300 ms)")
PY
}

# ---- P6: daemon memory idle and with many apps scaled to zero -----------------------------------
section_p6() {
    local src="$WORK/p6-src" idle after settled kids n
    start_daemon p6 "" || return 0
    sleep 2
    idle="$(rss_kb "$DAEMON_PID")"
    make_fixture_repo "$src"
    log "P6: pushing $BENCH_APPS apps (8 pushes at a time)"
    if ! seq 1 "$BENCH_APPS" | xargs -P 8 -I{} sh -c \
        'git -C "$1" push -q "ssh://git@127.0.0.1:$2/app-$3" main 2>"$4/p6-push-$3.err" || { cat "$4/p6-push-$3.err" >&2; exit 255; }' \
        _ "$src" "$DAEMON_SSH_PORT" {} "$WORK"; then
        fail "some P6 pushes failed (see above)"
    fi
    n="$("$CATWALK_BIN" --dir "$DAEMON_DIR" apps --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" \
        || { fail "apps --json failed"; n=0; }
    after="$(rss_kb "$DAEMON_PID")"
    sleep 5
    settled="$(rss_kb "$DAEMON_PID")"
    kids="$(children "$DAEMON_PID")"
    [[ "$n" -eq "$BENCH_APPS" ]] || fail "P6: $n apps registered, expected $BENCH_APPS"
    [[ "$kids" -eq 0 ]] || fail "P6: the daemon still has $kids child processes with no session open"
    local hwm
    hwm="$(awk '/^VmHWM:/ {print $2}' "/proc/$DAEMON_PID/status")"

    python3 - "$idle" "$after" "$settled" "$hwm" "$n" "$kids" <<'PY'
import sys
idle, after, settled, hwm, n, kids = (int(x) for x in sys.argv[1:])
print(f"\nP6 daemon memory (release build, VmRSS of the catwalk process)")
print(f"{'state':<52}{'RSS MB':>8}")
print(f"{'idle, 2 s after start':<52}{idle / 1024:>8.1f}")
print(f"{'right after %d pushed apps (8 pushes at a time)' % n:<52}{after / 1024:>8.1f}")
print(f"{'%d apps, scaled to zero (%d server processes), +5 s' % (n, kids):<52}{settled / 1024:>8.1f}")
print(f"{'peak (VmHWM)':<52}{hwm / 1024:>8.1f}")
print("(bars: QUALITY.md P6, <= 30 MB idle, <= 60 MB with 100 apps scaled to zero)")
PY
}

# ---- P7: wake from zero ---------------------------------------------------------------------------
section_p7() {
    local results="$WORK/results-p7.jsonl" py3 tok app
    : >"$results"
    py3="$(real_python3)"
    local everything="$DEPS/node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
    start_daemon p7 "$(printf '[gateway]\nrate_limit_per_minute = 0\n\n[apps.echo]\ncommand = ["%s", "%s"]\n\n[apps.everything]\ncommand = ["%s", "%s", "stdio"]\n' \
        "$py3" "$ECHO_SERVER" "$NODE" "$everything")" || return 0
    for app in echo everything; do
        tok="$(token "$app")" || { fail "tokens create $app failed"; return 0; }
        local cmd=("$py3" "$ECHO_SERVER")
        [[ "$app" == everything ]] && cmd=("$NODE" "$everything" stdio)
        log "P7: $BENCH_WAKE_RUNS wake-ups of $app"
        if line="$(python3 "$TIMING" wake --url "$DAEMON_HTTP/mcp/$app" --token "$tok" --runs "$BENCH_WAKE_RUNS" \
            -- "${cmd[@]}" 2>"$WORK/p7.err")"; then
            echo "{\"app\":\"$app\",\"r\":$line}" >>"$results"
        else
            fail "P7 $app: $(tail -3 "$WORK/p7.err" | tr '\n' ' ')"
        fi
    done

    python3 - "$results" "$BENCH_WAKE_RUNS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"\nP7 wake from zero: initialize POST -> answer with no server running, vs the server's own start-up ({sys.argv[2]} runs each, alternating; medians)")
print(f"{'server':<44}{'own start-up ms':>16}{'wake ms':>10}{'added ms':>10}")
names = {"echo": "python3 scripts/echo_server.py", "everything": "server-everything (node, stdio)"}
for r in rows:
    d, w = r["r"]["direct_median_ms"], r["r"]["wake_median_ms"]
    print(f"{names[r['app']]:<44}{d:>16.1f}{w:>10.1f}{w - d:>+10.1f}")
print("(own start-up: spawn -> initialize answered over stdio; bar: QUALITY.md P7, <= +100 ms)")
PY
}

# ---- P8: many open sessions with GET streams ------------------------------------------------------
section_p8() {
    local py3 tok before during kids out="$WORK/p8.out" shared mode i
    py3="$(real_python3)"
    if [[ "$BENCH_P8_SHARED" == 0 ]]; then shared=false; mode="one server process per session"; else
        shared=true; mode="shared = true: one server process for all sessions, ids rewritten"; fi
    # One load generator on one address holds every connection: no per-address cap for this run.
    start_daemon p8 "$(printf '[http]\nmax_connections_per_ip = 0\n\n[gateway]\nrate_limit_per_minute = 0\nmax_sessions_per_app = 100000\n\n[apps.hold]\ncommand = ["%s", "%s"]\nshared = %s\n' \
        "$py3" "$ECHO_SERVER" "$shared")" || return 0
    tok="$(token hold)" || { fail "tokens create hold failed"; return 0; }
    before="$(rss_kb "$DAEMON_PID")"
    log "P8: holding $BENCH_HOLD_SESSIONS sessions with GET streams for ${BENCH_DURATION}s ($mode)"
    "$LOAD_BIN" --url "$DAEMON_HTTP/mcp/hold" --token "$tok" --hold-sessions "$BENCH_HOLD_SESSIONS" \
        --duration "$BENCH_DURATION" --label catwalk --json >"$out" 2>"$WORK/p8.err" &
    local holder=$!
    for ((i = 0; i < 1200; i++)); do
        grep -q '^holding' "$out" 2>/dev/null && break
        kill -0 "$holder" 2>/dev/null || break
        sleep 0.1
    done
    during="$(rss_kb "$DAEMON_PID")"
    kids="$(children "$DAEMON_PID")"
    wait "$holder" || fail "P8 holder failed: $(tail -3 "$WORK/p8.err" | tr '\n' ' ')"

    python3 - "$out" "$before" "$during" "$kids" "$mode" <<'PY'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.startswith("{")]
before, during, kids, mode = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
print(f"\nP8 open sessions, each with a GET SSE stream, against /mcp/APP fronting python3 scripts/echo_server.py ({mode})")
if not lines:
    print("holder failed: no result"); sys.exit(0)
r = json.loads(lines[-1])
print(f"{'sessions':>9}{'streams held':>14}{'pings ok':>10}{'errors':>8}{'open s':>8}{'RSS before MB':>15}{'RSS held MB':>13}{'servers':>9}")
print(f"{r['sessions']:>9}{r['streams_open']:>14}{r['pings_ok']:>10}{r['errors']:>8}{r['open_seconds']:>8.1f}{before / 1024:>15.1f}{during / 1024:>13.1f}{kids:>9}")
if r.get("first_error"):
    print(f"first error: {r['first_error']}")
print("(bar: QUALITY.md P8, 1,000 sessions with GET streams open, 0 errors)")
PY
}
