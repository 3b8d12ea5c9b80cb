"""The answers domain: an answer's life (the state machine), its sources, takeover,
turns, callbacks."""
