"""Code generated from proto/dskit/v1/gateway.proto (the command is in its header)."""
