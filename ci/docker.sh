#!/usr/bin/env bash
# Make sure a real Docker Engine (Debian's docker.io) runs on this machine, for the Docker backend's tests and
# bench. Idempotent: a no-op when the engine already answers.
# Some VMs refuse a negative oom_score_adj, which the engine (and a kubelet) may ask for; a small runc wrapper
# clamps it to 0 and is made the engine's default runtime.
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/apt.sh"
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v dockerd >/dev/null || ! command -v jq >/dev/null || ! command -v busybox >/dev/null; then
  apt_get update -qq
  apt_get install -y -qq docker.io jq busybox-static >/dev/null
fi
if [ ! -x /usr/local/bin/runc-clamp-oom ]; then
  cat > /usr/local/bin/runc-clamp-oom <<'WRAP'
#!/bin/sh
prev=""; bundle=""
for a in "$@"; do { [ "$prev" = "--bundle" ] || [ "$prev" = "-b" ]; } && bundle="$a"; prev="$a"; done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  adj=$(jq '.process.oomScoreAdj // 0' "$bundle/config.json")
  if [ "$adj" -lt 0 ] 2>/dev/null; then
    jq '.process.oomScoreAdj = 0' "$bundle/config.json" > "$bundle/config.json.tmp" && mv "$bundle/config.json.tmp" "$bundle/config.json"
  fi
fi
exec /usr/sbin/runc "$@"
WRAP
  chmod +x /usr/local/bin/runc-clamp-oom
fi
mkdir -p /etc/docker
want='{"runtimes":{"clamp-oom":{"path":"/usr/local/bin/runc-clamp-oom"}},"default-runtime":"clamp-oom"}'
if [ "$(cat /etc/docker/daemon.json 2>/dev/null)" != "$want" ]; then
  echo "$want" > /etc/docker/daemon.json
  pid=$(pgrep -x dockerd || true)
  if [ -n "$pid" ]; then kill -HUP "$pid"; sleep 1; fi
fi
if ! docker info >/dev/null 2>&1; then
  setsid dockerd >/var/log/launch-dockerd.log 2>&1 </dev/null &
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
fi
docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/launch-dockerd.log" >&2; exit 1; }
echo "docker engine $(docker version --format '{{.Server.Version}}') is running"
