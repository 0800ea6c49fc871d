"""zt-relay: a TCP fallback relay for ZeroTier."""

__version__ = "0.1.0"
