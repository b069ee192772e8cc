"""The control plane: the vecmigrate command, the Python client, plans, reports, demos and
the dev server."""
