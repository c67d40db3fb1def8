"""Ray Serve application: HTTP ingress, batched scorer, request schemas, user-history store."""
from dien.serve.app import build_app
from dien.serve.config import RequestLimits, ScorerConfig, ServeArgs

__all__ = ["build_app", "RequestLimits", "ScorerConfig", "ServeArgs"]
