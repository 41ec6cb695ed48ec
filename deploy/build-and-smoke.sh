#!/usr/bin/env bash
# Build the skewless image from Dockerfile.gpu with podman, run it, and test it with an unmodified tritonclient.
#
#   deploy/build-and-smoke.sh                     # the CPU/edge image on a locally made Debian base
#   VARIANT=gpu BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 RUN_ARGS="--device nvidia.com/gpu=all" \
#     deploy/build-and-smoke.sh                   # where a registry and a GPU can be had
#
# Without a registry (as here) BASE_IMAGE defaults to localhost/skewless-base:bookworm, made with mmdebstrap
# when missing. The container runs with no network of its own (--network none: only its loopback), on the
# ports it ships with; the client (PYTHON, which needs tritonclient, onnxruntime and numpy: the test extra)
# runs in the container's network namespace through nsenter, so nothing is bound on this host's interfaces.
# Needs: podman (+ runc), nsenter, and mmdebstrap for the local base. Not part of .ci/run (minutes, root).
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT=${VARIANT:-cpu}
BASE_IMAGE=${BASE_IMAGE:-localhost/skewless-base:bookworm}
IMAGE=${IMAGE:-localhost/skewless:${VARIANT}}
PYTHON=${PYTHON:-python3}
RUN_ARGS=${RUN_ARGS:-}
NAME=skewless-smoke-$$
# This sandbox: runc (crun fails here), cgroupfs, chroot isolation for builds, bounded ulimits; no systemd to
# time the HEALTHCHECK, so it is run once by hand (podman healthcheck run) instead.
RUNTIME_ARGS=(--runtime runc --cgroup-manager cgroupfs)
CA=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

log() { printf '== %s\n' "$*" >&2; }

if ! podman image exists "$BASE_IMAGE"; then
  if [[ "$BASE_IMAGE" == localhost/skewless-base:* ]]; then
    log "making $BASE_IMAGE with mmdebstrap (Debian bookworm, python3)"
    mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,passwd bookworm - \
      | podman import - "$BASE_IMAGE" >/dev/null
  else
    podman pull "$BASE_IMAGE"
  fi
fi

log "building $IMAGE (VARIANT=$VARIANT, BASE_IMAGE=$BASE_IMAGE)"
build_args=(--isolation chroot --network host --format docker -f Dockerfile.gpu -t "$IMAGE"
            --build-arg "VARIANT=$VARIANT" --build-arg "BASE_IMAGE=$BASE_IMAGE")
if [[ -f "$CA" ]]; then  # pip inside the build trusts what this host trusts
  build_args+=(-v "$CA:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
start=$(date +%s)
podman build "${build_args[@]}" . >&2
log "built in $(( $(date +%s) - start ))s"
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$IMAGE"
podman image inspect --format 'image {{.RepoTags}}: {{.Size}} bytes, user {{.Config.User}}, entrypoint {{.Config.Entrypoint}}, exposed {{.Config.ExposedPorts}}' "$IMAGE"
podman image inspect --format 'healthcheck {{.Config.Healthcheck.Test}}' "$IMAGE" 2>/dev/null || true

# The container runs as the Kubernetes manifests run it: read-only root filesystem, no capabilities.
# A model repository: the examples plus a slow model, whose requests outlive a SIGTERM.
repo=$(mktemp -d)
cid=""
cleanup() {
  [[ -n "$cid" ]] && podman rm -f "$cid" >/dev/null 2>&1 || true
  rm -rf "$repo"
}
trap cleanup EXIT
cp -r examples/models/. "$repo/"
"$PYTHON" - "$repo" <<'EOF'
import sys, pathlib
from skewless.examples.generate import _Tensor, _config_text, make_slow_model
root = pathlib.Path(sys.argv[1])
make_slow_model(root / "slow" / "1" / "model.onnx", 1500.0)
(root / "slow" / "config.pbtxt").write_text(_config_text("slow", 8, [_Tensor("x", "FP32", [4])], [_Tensor("y", "FP32", [4])]))
EOF
chmod -R a+rX "$repo"

log "running $IMAGE"
# shellcheck disable=SC2086  # RUN_ARGS is a list of options
cid=$(podman run -d --name "$NAME" "${RUNTIME_ARGS[@]}" --network none \
        --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 --health-interval disable \
        --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges \
        -v "$repo:/models:ro" $RUN_ARGS "$IMAGE" --grace-period 30)
pid=$(podman inspect --format '{{.State.Pid}}' "$cid")
log "container ${cid:0:12} (pid $pid) runs as uid $(podman exec "$cid" id -u)"

status=0
nsenter --net="/proc/$pid/ns/net" -- "$PYTHON" deploy/smoke_client.py \
  --mlp-onnx examples/models/mlp/1/model.onnx \
  --healthcheck-command "podman healthcheck run $cid" \
  --stop-command "podman stop --time 40 $cid" || status=$?
# Stopped already when the client got that far; if it failed earlier, stop it now (SIGTERM) rather than wait.
podman stop --time 40 "$cid" >/dev/null 2>&1 || true
code=$(podman inspect --format '{{.State.ExitCode}}' "$cid")
echo "container exit code after SIGTERM: $code"
echo "--- container log (last lines) ---"
podman logs "$cid" 2>&1 | tail -n 8
[[ "$code" == 0 && "$status" == 0 ]] || { log "smoke test FAILED"; exit 1; }
log "smoke test passed"
