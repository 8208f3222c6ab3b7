"""What the server tells operators: Prometheus metrics, OpenTelemetry traces, JSON logs."""
