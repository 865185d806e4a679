"""Studies: complete, reproducible computations behind the ``dmdjax`` sub-commands."""
