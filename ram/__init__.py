"""RAM: Resilient Adaptive Manager — PostgreSQL high availability over Raft."""
__version__ = "0.1.0"
