"""Applies the change log, in order and exactly once, to the consolidated databases."""

from replicator.apply import apply_batch
from replicator.replicator import Replicator
from replicator.target import TargetDB

__all__ = ["Replicator", "TargetDB", "apply_batch"]
