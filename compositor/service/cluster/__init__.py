"""The service's seams on Redis, for nodes that share one cluster: the store and its outbox, placement across
nodes, calls that reach an egress's owner, and each node's lease."""
