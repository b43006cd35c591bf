"""The managed instance's specification, derived from the node's config and the committed members.

pg_hba admits exactly the members' hosts, and the passfile offers the replication password to the
members' PostgreSQL endpoints only; when membership changes, the spec changes and the instance is
reconfigured (a reload, no restart). Passwords are read through :mod:`ram.config` on every call
(inline values or ``*_password_file``), so a spec built later carries a rotated password.
"""

from __future__ import annotations

import ipaddress

from ram.config import NodeConfig, pg_address, pg_data_dir, replication_password
from ram.postgres.spec import ManagedInstanceSpec, PrimaryEndpoint, TlsFiles
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


def member_endpoints(config: NodeConfig, state: ClusterState) -> tuple[tuple[str, int], ...]:
    """Every member's PostgreSQL (host, port): this node, its configured peers, the committed members."""
    endpoints = [pg_address(config), *(peer.pg() for peer in config.raft.peers)]
    endpoints += [(m.pg_host, m.pg_port) for m in state.members.values()]
    return tuple(sorted(set(endpoints)))


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
        member_endpoints=member_endpoints(config, state),
        tls=_tls(config),
        tls_verify="verify-ca" if config.postgres.tls_verify == "ca" else "verify-full",
        parameters=dict(config.postgres.parameters),
        client_cidrs=tuple(config.postgres.client_cidrs),
        extra_listen=tuple(config.postgres.extra_listen),
        clone_on_rewind_failure=True,
    )


def _tls(config: NodeConfig) -> TlsFiles | None:
    pg = config.postgres
    if pg.tls_cert is None or pg.tls_key is None or pg.tls_ca is None:
        return None
    return TlsFiles(cert=pg.tls_cert, key=pg.tls_key, ca=pg.tls_ca)


def endpoint_of(state: ClusterState, name: str) -> PrimaryEndpoint | None:
    """Where member ``name``'s PostgreSQL accepts replication connections."""
    member = state.members.get(name)
    if member is None:
        return None
    return PrimaryEndpoint(host=member.pg_host, port=member.pg_port, name=name)
