"""``host:port`` addresses: the one parser every part of RAM uses (configuration, Raft runtime, API)."""

from __future__ import annotations


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` → (host, port), with a clear error for anything else."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"expected host:port with a port in 1..65535, got {value!r}")
    return host, int(port_text)
