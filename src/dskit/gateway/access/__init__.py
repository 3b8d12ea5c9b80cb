"""Who may do what: callers from keys or tokens, the access matrix, revocation."""
