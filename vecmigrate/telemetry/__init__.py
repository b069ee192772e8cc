"""OpenTelemetry traces and metrics, Prometheus exposition and structured logs.

Metric names live in :mod:`vecmigrate.telemetry.names`; set-up from ``OTEL_*`` variables in
:mod:`vecmigrate.telemetry.setup`.
"""
