"""The change log: frames, damage, trim, values too big for one frame."""
