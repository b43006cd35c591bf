"""Consensus runtime: the I/O around the pure Raft core (transport, storage, timers)."""
