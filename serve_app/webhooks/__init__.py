"""Signed webhooks (Standard Webhooks): endpoints agents register, a durable outbox filled in the job store's
terminal transitions, and a delivery loop in the job worker.

settings (WebhookSettings), models (tables), endpoints (the endpoint store), outbox (enqueue, claim, record),
ssrf (the URL guard and the guarded connection), signing (headers), delivery (the loop), routes (the API).
"""
