"""Process-wide helpers: the rank-zero logger and the allocator setting."""
