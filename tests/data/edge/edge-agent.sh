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
if [ -e /var/lib/edge-agent/cut ]; then  # the boot after a power cut (step-0.sh): what survived it
    rm -f /var/lib/edge-agent/cut
    say "etc=$(cat /etc/edge-edit)"
    say "var=$(md5sum -c --quiet /var/lib/edge-agent/data.md5 >/dev/null 2>&1 && echo kept || echo lost)"
    say "fsck=$(ostree fsck --repo=/sysroot/ostree/repo --quiet >/dev/null 2>&1 && echo ok || echo failed)"
    say "status=$(imagemode status --json | tr -d '\n')"
fi
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
        sh "$step" 2>&1 | sed -u 's/^/EDGE: | /'  # -u: a line the host acts on is not held back
        break
    done
fi
