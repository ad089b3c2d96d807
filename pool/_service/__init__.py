"""The service on top of the library: the command line, config files, live view, metrics, simulated market."""
