#!/bin/sh
# Every line for the test starts with "EDGE: ". The VM may have no network: this is its only channel.
say() { echo "EDGE: $*"; }
page=
for _ in $(seq 90); do
    page=$(podman exec edge-workload wget -q -O - http://127.0.0.1:8080/ 2>/dev/null) && break
    sleep 2
done
say "page=$page"
say "active=$(systemctl is-active edge-workload)"
say "netdevs=$(ls /sys/class/net | tr '\n' ' ')"
say "booted=$(imagemode status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["booted"]["image"]["imageDigest"])')"
python3 - <<'PY'
import json, subprocess
for e in json.load(open("/usr/lib/imagemode/embedded.json"))["images"]:
    exists = subprocess.run(["podman", "image", "exists", e["ref"]]).returncode == 0
    got = subprocess.run(["podman", "image", "inspect", "--format", "{{.Digest}}", e["ref"]],
                         capture_output=True, text=True).stdout.strip()
    print(f"EDGE: image {e['ref']} exists={exists} digest={got} listed={e['digest']}", flush=True)
PY
say "report done"
if [ -e /dev/disk/by-label/EDGESTEPS ]; then
    mkdir -p /run/edge-steps /var/lib/edge-agent
    mount -o ro,noload /dev/disk/by-label/EDGESTEPS /run/edge-steps
    for step in /run/edge-steps/step-*.sh; do
        name=$(basename "$step")
        [ -e "/var/lib/edge-agent/$name" ] && continue
        touch "/var/lib/edge-agent/$name"
        sync
        say "step $name"
        sh "$step" 2>&1 | sed 's/^/EDGE: | /'
        break
    done
fi
