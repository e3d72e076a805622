"""OpenStack adapters for accelgate (Cyborg driver, ironic-python-agent hardware manager)."""

__all__ = []
