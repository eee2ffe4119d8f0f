"""The HTTP gateway: Flask in front of NATS."""
