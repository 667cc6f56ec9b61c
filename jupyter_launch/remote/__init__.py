"""Client code for a running server: the HTTP transport, the remote agent's store and blobs, ``LaunchClient`` over
the API, and finding a local server. The server side (the Jupyter extension) lives in ``jupyter_launch.server``."""
