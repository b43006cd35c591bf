#!/bin/sh
# A virtual IP that follows the primary: a RAM callback (docs/deploy.md, "Callbacks").
#
#   [callbacks]
#   on_start = ["/etc/ram/vip.sh", "10.0.0.100/24", "eth0"]
#   on_stop = ["/etc/ram/vip.sh", "10.0.0.100/24", "eth0"]
#   on_role_change = ["/etc/ram/vip.sh", "10.0.0.100/24", "eth0"]
#
#   [postgres]
#   extra_listen = ["*"]          # PostgreSQL must answer on the VIP whenever the VIP comes
#
# RAM appends ACTION ROLE CLUSTER_NAME, so this runs as: vip.sh VIP/PREFIX DEVICE ACTION ROLE CLUSTER.
# The address is held while this member's PostgreSQL runs as the primary and dropped otherwise
# (also when PostgreSQL stops). It needs CAP_NET_ADMIN: run ram as root, or give the script that
# capability through sudo. tests/e2e/test_namespaces.py runs this very file.
set -eu
vip=$1 dev=$2 action=$3 role=$4
if [ "$action" != on_stop ] && [ "$role" = primary ]; then
    ip address replace "$vip" dev "$dev"
    # Tell the neighbours at once instead of waiting for their ARP caches to expire (iputils-arping).
    if command -v arping >/dev/null 2>&1; then
        arping -U -c 2 -I "$dev" "${vip%/*}" >/dev/null 2>&1 || true
    fi
    echo "$vip on $dev ($action, $role)"
else
    ip address del "$vip" dev "$dev" 2>/dev/null || true
    echo "$vip released ($action, $role)"
fi
