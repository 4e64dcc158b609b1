"""Running the farm on a remote Ray cluster: the Ray Jobs client and what it ships."""
