"""The pure models every layer shares: the spec, the lifecycle, the task messages and regions.

No I/O library is imported here: the workflows use these models inside Temporal's sandbox.
"""
