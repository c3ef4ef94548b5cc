"""The REST gateway: HTTP/JSON in front of the shop's gRPC services.

Kept free of imports: `python -m gateway` must set PROMETHEUS_MULTIPROC_DIR
before anything imports prometheus_client.
"""
