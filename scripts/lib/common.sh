# Shared by scripts/test, scripts/chaos and scripts/fuzz-api (sourced; the
# caller defines log and die).

# Makes sure PostgreSQL answers on 127.0.0.1:5432, starting the newest
# installed cluster if it does not; dies after 30 s without readiness.
ensure_postgres() {
    pg_isready -q -h 127.0.0.1 -p 5432 && return 0
    command -v pg_ctlcluster >/dev/null 2>&1 \
        || die "PostgreSQL is not running on 127.0.0.1:5432 and pg_ctlcluster is not available to start it"
    # The newest installed major version, e.g. 15.
    local pg_version
    pg_version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    log "starting PostgreSQL $pg_version/main"
    # Tolerate "already running" (e.g. still starting up): readiness decides.
    pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start \
        || log "pg_ctlcluster exited with $?; waiting for readiness anyway"
    for _ in $(seq 1 30); do
        pg_isready -q -h 127.0.0.1 -p 5432 && return 0
        sleep 1
    done
    die "PostgreSQL $pg_version/main did not become ready on 127.0.0.1:5432 within 30s"
}

# Exports CARGO_TARGET_DIR unless set: one build directory (/work/target)
# shared by every clone on this machine, else ./target.
default_target_dir() {
    if [[ -z "${CARGO_TARGET_DIR:-}" ]]; then
        if [[ -d /work && -w /work ]]; then
            export CARGO_TARGET_DIR=/work/target
        else
            export CARGO_TARGET_DIR=target
        fi
    fi
}

# Sets STREAMFORGE_BIN, building the release binary unless it is given.
streamforge_bin() {
    if [[ -z "${STREAMFORGE_BIN:-}" ]]; then
        default_target_dir
        log "building streamforge (release)"
        cargo build --release -p streamforge --bin streamforge
        STREAMFORGE_BIN="$CARGO_TARGET_DIR/release/streamforge"
    fi
}

# The tansu broker (a Kafka-compatible broker, ARCHITECTURE decided 11) with
# both storage engines the project uses: `memory://` for the tests' shared
# broker, `sqlite://` (feature libsql) where a restart must keep the topics
# (the broker-restart test, scripts/chaos). Installs tansu $TANSU_VERSION
# into ~/.cargo/bin once per machine (~15 min) unless cargo's install record
# shows both features; one install at a time. Sets TANSU to the binary.
TANSU_VERSION=0.6.0
ensure_tansu() {
    local record="${CARGO_HOME:-$HOME/.cargo}/.crates2.json"
    TANSU="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
    tansu_complete() {
        [[ -x "$TANSU" && -f "$record" ]] && python3 - "$record" "$TANSU_VERSION" <<'PY'
import json, sys
installs = json.load(open(sys.argv[1])).get("installs", {})
ok = any(key.startswith(f"tansu {sys.argv[2]} ") and {"dynostore", "libsql"} <= set(v.get("features", []))
         for key, v in installs.items())
sys.exit(0 if ok else 1)
PY
    }
    tansu_complete && return 0
    exec 8>"${TMPDIR:-/tmp}/streamforge-tansu-install.lock"
    flock 8
    if ! tansu_complete; then
        log "installing tansu $TANSU_VERSION with the dynostore and libsql engines (once per machine, ~15 min)"
        cargo install "tansu@$TANSU_VERSION" --locked --force --features dynostore,libsql \
            || die "could not install tansu $TANSU_VERSION"
    fi
    exec 8>&-
}
