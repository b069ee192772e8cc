"""Serving while migrating: the router applications use and the HTTP gateway in front of it."""
