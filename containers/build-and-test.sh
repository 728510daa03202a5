#!/usr/bin/env bash
# Build the exaslide CPU image on this machine with buildah (no Docker daemon, no
# container registry needed) and smoke-test it. `make containers` runs this; it is not
# part of `make test`.
#
#   1. tools: podman, buildah, debootstrap, runc (apt-get installs the missing ones; root)
#   2. the base image $BASE_IMAGE (Debian bookworm minbase + python3, python3-venv,
#      ca-certificates, with bookworm's updates), made with debootstrap and `podman import`;
#      reused when it already exists (REBUILD_BASE=1 remakes it)
#   3. an exaslide sdist (python -m build --sdist) into containers/.sdist/
#   4. `buildah bud` of containers/Containerfile.cpu, target runtime -> $IMAGE
#   5. `buildah bud --target smoke`: containers/smoke.sh runs inside the image at build
#      time, as its non-root user (exaslide env; synth -> mask -> extract; the viewer;
#      `import torch` must fail); the smoke image is removed afterwards
#   6. `podman run --rm $IMAGE env`; where that is refused (a sandbox: no CAP_SYS_RESOURCE,
#      hybrid cgroups), again with runc and rlimits within this shell's; if a container
#      runs: `synth` into a named volume and the viewer on a published port (token or 401).
#      A refusal is reported, not fatal: step 5 already ran the image's code.
#   7. only with GPU_STANDIN=1: containers/Containerfile.gpu (exaslide[all], torch with
#      CUDA) built and smoke-tested on the base of step 2 instead of its nvidia/cuda base
#      (not reachable from here; torch brings its CUDA libraries as wheels, so the base
#      adds only the CUDA runtime, driver forward compatibility and NVIDIA_* settings). No
#      GPU is used. Needs about 25 GB of free disk; the GPU image is removed afterwards
#      unless KEEP_GPU=1.
#   8. image size and build times
#
# This machine's pip configuration (local wheel folders, file:// indexes, its CA bundle) is
# passed into the build: each local path it names is mounted read-only at the same path
# and a pip.conf naming them is mounted at /etc/pip.conf, in the stages that download only
# (PIP_MOUNTS=0 turns this off; pip then uses PyPI with its own CA bundle). The
# Containerfiles know nothing of it, and the images keep no trace of it.
#
# Environment: IMAGE (localhost/exaslide:cpu), BASE_IMAGE
# (localhost/debian-bookworm-python:latest), DEBIAN_MIRROR (http://deb.debian.org/debian),
# REBUILD_BASE=1, PIP_MOUNTS=0, VIEWER_PORT (18000), GPU_STANDIN=1, GPU_IMAGE
# (localhost/exaslide:gpu-standin), KEEP_GPU=1.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
IMAGE=${IMAGE:-localhost/exaslide:cpu}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-bookworm-python:latest}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
GPU_IMAGE=${GPU_IMAGE:-localhost/exaslide:gpu-standin}
SDIST_DIR=containers/.sdist
VIEWER=exaslide-build-viewer        # the container and the volume of step 6
VOLUME=exaslide-build-data
VIEWER_PORT=${VIEWER_PORT:-18000}
T0=$SECONDS
declare -A TIMES=()
WORK=$(mktemp -d "${TMPDIR:-/tmp}/exaslide-containers.XXXXXX")
# working containers that exist before this run are left alone; any that a failed or
# interrupted build leaves behind are removed on exit
BEFORE=$(buildah containers --quiet --all 2>/dev/null | sort || true)

remove_rootfs() {  # unmount whatever debootstrap left mounted below it, then delete it
    local dir=$1
    grep -o " $dir/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf --one-file-system "$dir"
}

cleanup() {
    local rc=$? id
    podman rm -f "$VIEWER" >/dev/null 2>&1 || true
    podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
    for id in $(buildah containers --quiet --all 2>/dev/null | sort | comm -13 <(echo "$BEFORE") -); do
        buildah rm "$id" >/dev/null 2>&1 || true
    done
    [ -d "$WORK/rootfs" ] && remove_rootfs "$WORK/rootfs"
    rm -rf --one-file-system "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n=== [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
elapsed() { local s=$1; printf '%dm%02ds' $((s / 60)) $((s % 60)); }
mb() { echo $(($(podman image inspect --format '{{.Size}}' "$1") / 1000000)); }

# make_base IMAGE DESCRIPTION SOURCES_LIST SUITE MIRROR [DEBOOTSTRAP_OPTIONS...]
# debootstrap a minbase root, point apt at SOURCES_LIST, apply the suite's updates, empty
# apt's cache and import the root as IMAGE (reused when it exists, unless REBUILD_BASE=1)
make_base() {
    local image=$1 description=$2 sources=$3 suite=$4 mirror=$5 rootfs=$WORK/rootfs
    shift 5
    if podman image exists "$image" && [ "${REBUILD_BASE:-0}" != 1 ]; then
        echo "reusing $image (made $(podman image inspect --format '{{.Created}}' "$image"))"
        return
    fi
    [ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 1; }
    echo "debootstrap --variant=minbase $* $suite ROOT $mirror"
    debootstrap --variant=minbase "$@" "$suite" "$rootfs" "$mirror" > "$WORK/debootstrap.log" 2>&1 \
        || { tail -30 "$WORK/debootstrap.log" >&2; exit 1; }
    tail -1 "$WORK/debootstrap.log"
    echo "$sources" > "$rootfs/etc/apt/sources.list"
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c 'apt-get update && apt-get upgrade -y && apt-get clean' > "$WORK/upgrade.log" 2>&1 \
        || { tail -30 "$WORK/upgrade.log" >&2; echo "apt-get upgrade in the new root failed" >&2; exit 1; }
    grep -E '^[0-9]+ upgraded' "$WORK/upgrade.log" || true
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log \
           "$rootfs"/tmp/*
    : > "$rootfs/etc/resolv.conf"
    echo "$(du -sh "$rootfs" | cut -f1) on disk"
    tar --numeric-owner --xattrs -C "$rootfs" -cf - . \
        | podman import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["/bin/bash"]' \
            --change "LABEL org.opencontainers.image.description=\"$description\"" \
            --message "$description" - "$image" >/dev/null
    remove_rootfs "$rootfs"
    echo "made $image"
}

# ------------------------------------------------------------------------------ 1. tools
step "1 tools"
missing=()
for tool in podman buildah debootstrap runc; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "missing: ${missing[*]}; install them (Debian: apt-get install podman buildah debootstrap runc)" >&2
        exit 1
    fi
    echo "installing ${missing[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "$(podman --version); $(buildah --version); debootstrap $(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo '?')"

# -------------------------------------------------------------------------- 2. base image
step "2 base image $BASE_IMAGE"
t=$SECONDS
make_base "$BASE_IMAGE" "Debian bookworm minbase + python3 python3-venv ca-certificates (debootstrap)" \
"deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main" \
    bookworm "$DEBIAN_MIRROR" --include=python3,python3-venv,ca-certificates
podman images --format '{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' "$BASE_IMAGE"
TIMES[base]=$((SECONDS - t))

# ------------------------------------------------------------------------------- 3. sdist
step "3 sdist"
t=$SECONDS
py=python3
if ! python3 -c 'import build' 2>/dev/null; then
    py=$WORK/build-venv/bin/python
    python3 -m venv "$WORK/build-venv"
    "$py" -m pip install --quiet build
fi
rm -rf "$SDIST_DIR"
"$py" -m build --sdist --outdir "$SDIST_DIR" . > "$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log" >&2; exit 1; }
ls -l "$SDIST_DIR"
TIMES[sdist]=$((SECONDS - t))

# --------------------------------------------------------------------- pip configuration
COMMON_ARGS=(--isolation chroot --network host --layers --force-rm
             --build-arg "SDIST_DIR=$SDIST_DIR"
             --build-arg "VCS_REF=$(git describe --always --dirty 2>/dev/null || echo unknown)")
MOUNT_ARGS=()
if [ "${PIP_MOUNTS:-1}" = 1 ]; then
    # This machine's pip settings that name local files: find-links folders and file://
    # indexes (their parent folder, which holds the files the index links to), mounted
    # read-only at the same paths, and the CA bundle (`cert`: where HTTPS goes through a
    # TLS-inspecting proxy, PyPI's certificate chain ends in a CA only this machine's
    # bundle holds), mounted at /etc/pip-host-ca.crt. (Constraint files are not passed: the
    # lock pins everything.) buildah leaves an empty mount point behind for each, in the
    # stage being built: so they are given only to the stages that download (deps, wheel),
    # which the runtime image copies files out of, never to the runtime stage's lineage.
    python3 - "$WORK/pip.conf" > "$WORK/mounts" <<'EOF'
import configparser, os, subprocess, sys
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                     capture_output=True, text=True).stdout
settings = {}
for line in out.splitlines():
    key, _, value = line.partition("=")
    name = key.split(".", 1)[-1]
    if name in ("find-links", "extra-index-url", "index-url", "cert"):
        settings.setdefault(name, value.strip().strip("'\""))
mounts, kept = set(), {}
for name, value in settings.items():
    words = []
    for word in value.split():
        path = word[len("file://"):] if word.startswith("file://") else word
        if not path.startswith("/"):
            words.append(word)          # a remote index: passed on as it is
            continue
        if not os.path.exists(path):
            continue
        words.append(word)
        if name == "cert":              # the bundle: at a path of its own in the build
            mounts.add(f"{path}:/etc/pip-host-ca.crt")
            words[-1] = "/etc/pip-host-ca.crt"
        elif word.startswith("file://"):  # /opt/pypi/simple -> /opt/pypi (../../files)
            mounts.add(os.path.dirname(path.rstrip("/")))
        else:
            mounts.add(path)
    if words:
        kept[name] = " ".join(words)
if not mounts:
    sys.exit(0)
conf = configparser.ConfigParser()
conf["global"] = kept
with open(sys.argv[1], "w") as f:
    conf.write(f)
print("\n".join(sorted(mounts)))
EOF
    if [ -s "$WORK/mounts" ]; then
        while read -r m; do
            case $m in *:*) MOUNT_ARGS+=(--volume "$m:ro") ;; *) MOUNT_ARGS+=(--volume "$m:$m:ro") ;; esac
        done < "$WORK/mounts"
        MOUNT_ARGS+=(--volume "$WORK/pip.conf:/etc/pip.conf:ro")
        echo "pip inside the build: $(tr '\n' ' ' < "$WORK/mounts")mounted read-only; /etc/pip.conf:"
        sed -e '/^$/d' -e 's/^/    /' "$WORK/pip.conf"
    fi
fi

# build_and_smoke CONTAINERFILE BASE IMAGE LABEL: stage by stage (the layer cache carries
# each into the next): `python` if the file has it, without the pip mounts; `deps` and
# `wheel` with them; `runtime`, tagged IMAGE, without them (deps and wheel come from the
# cache); then `smoke` (its RUN is the test). The smoke image and the image IMAGE named
# before are removed.
build_and_smoke() {
    local file=$1 base=$2 image=$3 label=$4 old new
    local args=("${COMMON_ARGS[@]}" -f "$file" --build-arg "BASE=$base")
    old=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    step "$label buildah bud -f $file: the stages deps and wheel, then runtime -> $image"
    t=$SECONDS
    if grep -qiE '^FROM .* AS python$' "$file"; then
        buildah bud "${args[@]}" --target python .
    fi
    buildah bud "${args[@]}" "${MOUNT_ARGS[@]}" --target deps .
    buildah bud "${args[@]}" "${MOUNT_ARGS[@]}" --target wheel .
    buildah bud "${args[@]}" --target runtime -t "$image" .
    # nothing of this machine's pip set-up in the image: no mount point left behind
    local root target leaked=()
    root=$(podman image mount "$image")
    for ((i = 1; i < ${#MOUNT_ARGS[@]}; i += 2)); do
        target=${MOUNT_ARGS[i]#*:}
        target=${target%:ro}
        [ -e "$root$target" ] && leaked+=("$target")
    done
    podman image unmount "$image" >/dev/null
    [ ${#leaked[@]} -eq 0 ] || { echo "left in $image: ${leaked[*]}" >&2; exit 1; }
    echo "no trace of the build's pip mounts in $image"
    TIMES[$image]=$((SECONDS - t))
    step "$label smoke test inside the build (buildah bud -f $file --target smoke)"
    t=$SECONDS
    buildah bud "${args[@]}" --target smoke -t "$image-smoke" .
    buildah rmi "$image-smoke" >/dev/null
    TIMES[$image-smoke]=$((SECONDS - t))
    new=$(podman image inspect --format '{{.Id}}' "$image")
    if [ -n "$old" ] && [ "$old" != "$new" ]; then  # untagged now; the layer cache stays
        podman rmi "$old" >/dev/null 2>&1 && echo "removed the previous $image (${old:0:12})" || true
    fi
}

# ----------------------------------------------------------------------- 4, 5. image, smoke
build_and_smoke containers/Containerfile.cpu "$BASE_IMAGE" "$IMAGE" "4-5"

# --------------------------------------------------------------------------- 6. podman run
step "6 podman run --rm $IMAGE env"
RUN=()
if podman run --rm "$IMAGE" env > "$WORK/run.log" 2>&1; then
    RUN=(podman run)
    PODMAN_RUN="works"
else
    PODMAN_RUN="refused (exit $?): $(grep -v '^$' "$WORK/run.log" | tail -1 || true)"
    cat "$WORK/run.log"
    echo "podman run: $PODMAN_RUN"
    # In a sandbox without CAP_SYS_RESOURCE and with hybrid cgroups (v1 + an empty v2),
    # crun cannot raise the containers' rlimits and rejects the cgroup layout: runc, with
    # rlimits no higher than this shell's own hard limits (nproc also capped by pid_max),
    # starts containers there.
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    pid_max=$(cat /proc/sys/kernel/pid_max)
    [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ] && nproc=$pid_max
    FALLBACK=(podman --runtime runc run --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
    step "6 retry: ${FALLBACK[*]} --rm $IMAGE env"
    if command -v runc >/dev/null 2>&1 && "${FALLBACK[@]}" --rm "$IMAGE" env > "$WORK/run.log" 2>&1; then
        RUN=("${FALLBACK[@]}")
        PODMAN_RUN="$PODMAN_RUN; works as: ${FALLBACK[*]}"
    else
        PODMAN_RUN="$PODMAN_RUN; the runc retry failed too: $(grep -v '^$' "$WORK/run.log" | tail -1 || true)"
    fi
fi
cat "$WORK/run.log"
if [ ${#RUN[@]} -gt 0 ]; then
    # the image as a user runs it: a named volume on /data (written by the non-root user),
    # the viewer on a published port, with and without its token
    step "6 ${RUN[*]}: synth into a volume, then the viewer on 127.0.0.1:$VIEWER_PORT"
    podman volume create "$VOLUME" >/dev/null
    "${RUN[@]}" --rm -v "$VOLUME:/data" "$IMAGE" \
        synth /data/slides --width 2048 --height 2048 --tumours 1 --seed 2
    "${RUN[@]}" -d --name "$VIEWER" -p "127.0.0.1:$VIEWER_PORT:8000" -v "$VOLUME:/data" "$IMAGE" \
        view /data/slides --host 0.0.0.0 --port 8000 --token smoke-token >/dev/null
    python3 - "$VIEWER_PORT" <<'EOF_PY'
import json, sys, time, urllib.error, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(60):
    try:
        urllib.request.urlopen(url + "/api/slides", timeout=5)
    except urllib.error.HTTPError as e:
        assert e.code == 401, e
        print("GET /api/slides without the token:", e.code)
        break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("the viewer did not answer")
with urllib.request.urlopen(url + "/api/slides?token=smoke-token", timeout=30) as r:
    slides = json.load(r)
    print("GET /api/slides?token=...:", r.status, [s["name"] for s in slides])
with urllib.request.urlopen(url + f"/slides/{slides[0]['id']}_files/0/0_0.jpeg?token=smoke-token",
                            timeout=30) as r:
    print("GET a tile:", r.status, r.headers["content-type"], len(r.read()), "bytes")
EOF_PY
    podman logs "$VIEWER" 2>&1 | tail -3
    podman rm -f "$VIEWER" >/dev/null
    podman volume rm "$VOLUME" >/dev/null
fi
echo "podman run: $PODMAN_RUN"

# ------------------------------------------------------------- 7. GPU image on a stand-in
if [ "${GPU_STANDIN:-0}" = 1 ]; then
    build_and_smoke containers/Containerfile.gpu "$BASE_IMAGE" "$GPU_IMAGE" "7 (GPU_STANDIN=1, base $BASE_IMAGE)"
    GPU_SUMMARY="$GPU_IMAGE (Containerfile.gpu on $BASE_IMAGE): $(mb "$GPU_IMAGE") MB; image $(elapsed "${TIMES[$GPU_IMAGE]}"), smoke $(elapsed "${TIMES[$GPU_IMAGE-smoke]}")"
    if [ "${KEEP_GPU:-0}" != 1 ]; then
        podman rmi "$GPU_IMAGE" >/dev/null && GPU_SUMMARY="$GPU_SUMMARY; removed (KEEP_GPU=1 keeps it)"
    fi
fi

# ----------------------------------------------------------------------------- 8. summary
step "8 summary"
podman images --format '{{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' "$IMAGE"
printf 'image %s: %d MB (base %s: %d MB); user %s, entrypoint %s, cmd %s, ports %s, volumes %s\n' \
    "$IMAGE" "$(mb "$IMAGE")" "$BASE_IMAGE" "$(mb "$BASE_IMAGE")" \
    "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" \
    "$(podman image inspect --format '{{.Config.Entrypoint}}' "$IMAGE")" \
    "$(podman image inspect --format '{{.Config.Cmd}}' "$IMAGE")" \
    "$(podman image inspect --format '{{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}' "$IMAGE")" \
    "$(podman image inspect --format '{{range $v, $_ := .Config.Volumes}}{{$v}} {{end}}' "$IMAGE")"
printf 'times: base image %s, sdist %s, image %s, smoke %s; total %s\n' \
    "$(elapsed "${TIMES[base]}")" "$(elapsed "${TIMES[sdist]}")" "$(elapsed "${TIMES[$IMAGE]}")" \
    "$(elapsed "${TIMES[$IMAGE-smoke]}")" "$(elapsed $((SECONDS - T0)))"
echo "podman run: $PODMAN_RUN"
[ -n "${GPU_SUMMARY:-}" ] && echo "GPU stand-in: $GPU_SUMMARY"
echo "build-and-test: OK"
