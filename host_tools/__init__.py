"""odmrgw: host tools for the ODMR mail gateway."""
