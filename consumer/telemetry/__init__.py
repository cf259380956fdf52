"""Telemetry around the worker: Prometheus metrics (``metrics``) and OpenTelemetry traces
(``tracing``). Each is a small piece the worker calls at a handful of points; the execution
core knows nothing of either (it only offers listeners: circuit changes, engine requests)."""
