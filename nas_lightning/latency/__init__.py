"""Latency models of archs."""

from nas_lightning.latency.base import FlopsProxy, LatencyModel

__all__ = ["FlopsProxy", "LatencyModel"]
