"""The daemon: wiring, lifecycle and the command line."""
