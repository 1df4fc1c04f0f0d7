#!/bin/sh
# One PXE client of e2e-pxe-crowd, run in its own network namespace: a
# lease from node1, then what a node's firmware fetches by TFTP and its
# iPXE by HTTP, then the kernel once more by TFTP (as a pxelinux node would
# load it). Appends "PHASE UNIX-TIME" lines to DIR/times as each phase ends.
#   pxe-client.sh DIR SERVER BOOT_LOADER BOOT_SCRIPT KERNEL_URL INITRD_URL
# udhcpc runs this same file as its script (bound, deconfig, ...).
case "${1-}" in
bound | renew) echo "${ip:-}" > "$LEASE_FILE"; exit 0 ;;
deconfig | leasefail | nak) exit 0 ;;
esac
set -eu
dir=$1 server=$2 loader=$3 script=$4 kernel_url=$5 initrd_url=$6
mark() { echo "$1 $(date +%s.%N)" >> "$dir/times"; }
mark start
LEASE_FILE=$dir/lease udhcpc -i eth0 -n -q -t 30 -T 1 -s "$0"
ip addr add "$(cat "$dir/lease")/24" dev eth0
mark lease
tftp() { curl -sS --fail --max-time 300 --tftp-blksize 1432 -o "$dir/$2" "tftp://$server/$1"; }
tftp "$loader" loader
tftp "$script" script
mark pxe
curl -sS --fail --max-time 300 -o "$dir/kernel" "$kernel_url"
curl -sS --fail --max-time 300 -o "$dir/initrd" "$initrd_url"
mark booted
tftp "${kernel_url##*/}" tftp-kernel
mark tftp-kernel
