"""Ray Serve application: HTTP ingress, batched scorer, request schemas, user-history store.

The application builder is ``dien.serve.app:build_app``; this package's top level stays free of torch so that
Serve's proxy can import :mod:`dien.serve.proxy_guard` cheaply.
"""
from dien.serve.config import RequestLimits, ScorerConfig, ServeArgs

__all__ = ["RequestLimits", "ScorerConfig", "ServeArgs"]
