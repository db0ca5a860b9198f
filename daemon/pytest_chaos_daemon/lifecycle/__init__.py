"""A fault's life: injections in force, the journal that outlives the daemon, leases and durations."""
