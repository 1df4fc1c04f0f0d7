#!/bin/bash
# node1.sh: what node1's boot programs share, sourced by each (not run):
# the profile's settings, the run directory and how they speak.
#
# These variables override, for tests and for odd hardware:
#   KRGISO_ENV            the settings file (/etc/krgiso/cluster.env)
#   KRGISO_CLUSTER_IFACE  the cluster interface (instead of the profile's)
#   KRGISO_NFS=no         serve PXE and TFTP only (no nodes root, no NFS)
#   KRGISO_UPLINK_WAIT    seconds to wait for the uplink's lease (20)
#   KRGISO_STATUS_LISTEN  where the status page answers: cluster or all
#   KRGISO_RUN            the run directory (/run/krgiso)
ENV_FILE=${KRGISO_ENV:-/etc/krgiso/cluster.env}
RUN=${KRGISO_RUN:-/run/krgiso}
# Set here for the programs that source this file.
# shellcheck disable=SC2034
{
    ETC=$(dirname "$ENV_FILE")
    LIB=/usr/local/lib/krgiso
    # What node1 serves the nodes by TFTP: the image's boot files, linked,
    # and the boot script made from its template for the address the nodes
    # use.
    SERVED_DIR=$RUN/tftp
    # Where the KRGISO-DATA partition is mounted, when there is one.
    DATA_DIR=/srv/krgiso/data
}
# shellcheck source=/dev/null
. "$ENV_FILE"
CLUSTER_IFACE=${KRGISO_CLUSTER_IFACE:-$CLUSTER_IFACE}
STATUS_LISTEN=${KRGISO_STATUS_LISTEN:-${STATUS_LISTEN:-cluster}}
mkdir -p "$RUN"

# To stderr: functions whose stdout is their result may say things too.
say() { echo "krgiso-node1: $*" >&2; }

# The value of KEY in FILE, a KEY=VALUE file: read, never run.
value_of() { # FILE KEY
    sed -n "s/^$2=//p" "$1" 2>/dev/null | head -n 1
}

# Stops what PIDFILE names, if it runs.
stop_pid() {
    [ -f "$1" ] && kill "$(cat "$1")" 2>/dev/null
    rm -f "$1"
}

default_route_dev() {
    ip -4 route show default | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }'
}

# A dotted quad as a number; fails for anything else.
as_number() {
    local IFS=. parts p n=0
    [[ $1 =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]] || return 1
    read -r -a parts <<< "$1"
    for p in "${parts[@]}"; do
        [ "$((10#$p))" -le 255 ] || return 1
        n=$(((n << 8) | 10#$p))
    done
    echo "$n"
}
