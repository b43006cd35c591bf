"""The cluster application: what RAM replicates through Raft (commands decided against the cluster
state, their events in ``pgraft.events``), and the node that runs it."""
