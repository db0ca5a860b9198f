"""Running programs inside a target: the confine helper, namespaces, probe tracking, the target's files and /proc."""
