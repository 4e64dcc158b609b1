"""Running the farm on a remote Ray cluster: the Ray Jobs client (client.py) and what it shares with
the head side, cluster/head.py (protocol.py)."""
