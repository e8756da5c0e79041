"""Node machines on fly.io: `lucidity fly nodes --count N` and `ensure_nodes(n)`, through the Machines API.

Owns: the few Machines API requests a cluster needs (list, create, start, wait, delete), the client-side
rate limiter and the 429 back-off around them, the machine config of a node, and the `fly` subcommand.
Deliberately not here: anything about sockets, the node daemon itself (the machines run the ordinary
`lucidity node`), and fly apps, volumes, IPs or secrets, which stay with flyctl.

What it relies on, from fly.io's documentation (docs/fly.md lists the pages)::

    base URL     http://_api.internal:4280 inside the 6PN (on a machine), https://api.machines.dev outside;
                 $FLY_API_HOSTNAME overrides both (the variable the API reference's examples use)
    auth         Authorization: Bearer $FLY_API_TOKEN on every request
    list         GET    /v1/apps/{app}/machines                          -> [machine]
    create       POST   /v1/apps/{app}/machines   {"name", "region", "config": {"image", ...}} -> machine
    start        POST   /v1/apps/{app}/machines/{id}/start
    wait         GET    /v1/apps/{app}/machines/{id}/wait?instance_id=&state=&timeout=  (408 on timeout)
    delete       DELETE /v1/apps/{app}/machines/{id}?force=true         (force stops a running machine)
    rate limits  1 request/s per action and per app or machine, bursts of 3; Get Machine 5/s, bursts of 10

A node machine runs, with no shell in between (``init.entrypoint`` and ``init.cmd``, run as they are)::

    lucidity node CONTROL --bind tcp://fly-local-6pn:3031
                  --advertise $FLY_MACHINE_ID.vm.$FLY_APP_NAME.internal --name lucidity-node-I

and the node daemon expands the two variables from its own environment, so each node tells clients the
stable 6PN name of its own machine. Machines are named ``lucidity-node-1 .. N`` and carry the metadata
``lucidity=node``; a run finds them by both, which is what makes it idempotent: a second run with the same
count creates nothing, starts what is stopped and waits for what is booting.
"""

from __future__ import annotations

from .api import FlyError, MachinesAPI
from .cli import add_command, run
from .nodes import Guest, NodeMachine, Outcome, destroy_nodes, ensure_nodes, node_command

__all__ = ["FlyError", "Guest", "NodeMachine", "Outcome", "MachinesAPI", "ensure_nodes", "destroy_nodes",
           "node_command", "add_command", "run"]
