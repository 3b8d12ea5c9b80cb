"""Backends behind protocols, memory and Redis: the answer log, limits, cache, keys."""
