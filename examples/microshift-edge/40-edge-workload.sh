#!/bin/sh
# Required health check, as a MicroShift node has for its workloads: the embedded workload serves.
# A new OS version whose workload does not come up within 120 s goes back to the previous version.
for _ in $(seq 60); do
    if podman exec edge-workload wget -q -O - http://127.0.0.1:8080/ 2>/dev/null; then
        exit 0
    fi
    sleep 2
done
echo "edge-workload does not serve on :8080"
exit 1
