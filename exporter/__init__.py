"""buddy-exporter: a Prometheus exporter for Buddy.works pipeline actions."""

__version__ = "0.1.0"
