"""Authentication of the agent HTTP API: the "agent-api-v1" profile of RFC 9421 (hmac-sha256).

Server side: ``middleware.AgentAuthMiddleware`` (pure ASGI) runs the profile's checks through
``verifier.RequestVerifier`` against the shared database (``keys``, ``nonces``, ``ratelimit``), reading
the body (``body``) only after the headers passed, under per-replica caps (``pending``); behind Ray Serve
the ingress first checks that the proxy passes TCP peers through (``serve_proxy``).
Client side: ``signing.AgentSigner`` (an ``httpx.Auth``). This package file imports nothing on purpose:
the client SDK imports ``serve_app.auth.signing`` without pulling in SQLAlchemy, Starlette, Ray or torch.
"""
