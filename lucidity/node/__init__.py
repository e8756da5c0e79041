"""The daemons: control, node, worker, limits, and the command line."""
