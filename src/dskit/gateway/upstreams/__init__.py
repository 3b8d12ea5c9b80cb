"""Upstreams: the pool of upstream clients, breakers and fallbacks."""
