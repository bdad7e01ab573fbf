"""What the bots change: capture triggers (`triggers`), fences (`fence`), hook capture
for pooled connections (`hooks`), the harvester (`harvester`), and installing or
removing all of it (`install`).

Imports planning, the change log and the vocabulary; never the cutover or the daemon.
"""
