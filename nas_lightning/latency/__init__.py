"""Latency models of archs."""

from nas_lightning.latency.base import FlopsProxy, LatencyModel
from nas_lightning.latency.table import LatencyTable, LatencyTableMismatch, measure_latency

__all__ = ["FlopsProxy", "LatencyModel", "LatencyTable", "LatencyTableMismatch", "measure_latency"]
