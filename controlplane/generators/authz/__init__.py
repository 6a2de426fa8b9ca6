"""AuthorizationPolicy -> Envoy RBAC and ext_authz filters (builder.py is the entry point)."""
