"""Small shared helpers: registries, atomic file writes, rank-consistent randomness."""

from nas_lightning.utils.atomic import atomic_write_json, atomic_write_text
from nas_lightning.utils.distributed import broadcast_object, derive_seed, reduce_sum, step_generator
from nas_lightning.utils.registry import Registry

__all__ = [
    "Registry",
    "atomic_write_json",
    "atomic_write_text",
    "broadcast_object",
    "derive_seed",
    "reduce_sum",
    "step_generator",
]
