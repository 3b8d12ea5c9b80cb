"""The HTTP and gRPC edge: routes, views, deps, middleware (parse, authorise, choose the
response)."""
