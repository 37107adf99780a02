"""The daemon's HTTP port: the server (a selector and a fixed pool of workers) and the API it answers."""
