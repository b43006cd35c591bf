"""The managed instance's specification, derived from the node's config and the committed members.

pg_hba admits exactly the members' hosts; when membership changes, the spec changes and the
instance is reconfigured (a reload, no restart).
"""

from __future__ import annotations

import ipaddress

from ram.config import NodeConfig, pg_address, pg_data_dir, replication_password
from ram.postgres.spec import ManagedInstanceSpec, PrimaryEndpoint
from ram.projections.state import ClusterState


def _ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def member_hosts(config: NodeConfig, state: ClusterState) -> tuple[str, ...]:
    """IP addresses allowed to connect: every member's PostgreSQL and Raft host (sorted, unique)."""
    hosts = {pg_address(config)[0], config.raft.listen.rpartition(":")[0]}
    for member in state.members.values():
        hosts.add(member.pg_host)
        hosts.add(member.raft_address.rpartition(":")[0])
    for peer in config.raft.peers:
        hosts.add(peer.pg()[0])
    ips = {ip for ip in (_ip(h) for h in hosts) if ip is not None}
    if any(ipaddress.ip_address(ip).is_loopback for ip in ips):
        # Members on loopback aliases of one machine: the kernel gives client connections the source
        # address 127.0.0.1 (libpq can not bind another), so it must be admitted too.
        ips.add("127.0.0.1")
    return tuple(sorted(ips))


def instance_spec(config: NodeConfig, state: ClusterState) -> ManagedInstanceSpec:
    host, port = pg_address(config)
    password = replication_password(config)  # reads replication_password_file when that is how it is given
    if not password:
        raise ValueError("postgres.replication_password is required to manage PostgreSQL")
    return ManagedInstanceSpec(
        name=config.name,
        data_dir=pg_data_dir(config),
        host=host,
        port=port,
        replication_password=password,
        members=member_hosts(config, state),
        parameters=dict(config.postgres.parameters),
        clone_on_rewind_failure=True,
    )


def endpoint_of(state: ClusterState, name: str) -> PrimaryEndpoint | None:
    """Where member ``name``'s PostgreSQL accepts replication connections."""
    member = state.members.get(name)
    if member is None:
        return None
    return PrimaryEndpoint(host=member.pg_host, port=member.pg_port, name=name)
