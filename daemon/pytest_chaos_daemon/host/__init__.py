"""What the node offers: its cgroup layout and namespace, and whether its kernel has netem."""
