"""A prediction run under Lightning: module, writer, progress, entry point, config checks."""
