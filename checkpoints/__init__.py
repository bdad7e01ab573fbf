"""Durable replication positions, kept inside the databases they describe."""

from checkpoints.store import Checkpoint, CheckpointStore, SourceApplied

__all__ = ["Checkpoint", "CheckpointStore", "SourceApplied"]
