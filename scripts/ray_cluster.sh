#!/usr/bin/env bash
# Start a Ray cluster and submit `vsr batch --executor ray` to it (one actor per GPU holds a warm
# engine; segments and files are its tasks). Needs `pip install "ray[default]"` on every node and
# the inputs/output folder on storage every node sees.
#
#   scripts/ray_cluster.sh head                  # on the head node
#   scripts/ray_cluster.sh worker HEAD_IP:6379   # on every other node
#   scripts/ray_cluster.sh submit INPUT... --output-dir /shared/out --segments 16 [vsr batch flags]
#   scripts/ray_cluster.sh stop                  # on every node
set -euo pipefail

port=${RAY_PORT:-6379}
cmd=${1:-}
[ "$#" -gt 0 ] && shift

case "$cmd" in
    head)
        exec ray start --head --port="$port" "$@"
        ;;
    worker)
        address=${1:?usage: $0 worker HEAD_IP:PORT}
        shift
        exec ray start --address="$address" "$@"
        ;;
    submit)
        exec "$(dirname "$0")/exitcode_wrapper.sh" "${VSR:-vsr}" batch "$@" --executor ray --ray-address "${RAY_ADDRESS:-auto}"
        ;;
    stop)
        exec ray stop
        ;;
    *)
        echo "usage: $0 head | worker HEAD_IP:PORT | submit INPUT... --output-dir DIR [flags] | stop" >&2
        exit 2
        ;;
esac
