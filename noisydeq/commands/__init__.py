"""CLI sub-commands, one module each (registered in noisydeq.cli)."""
