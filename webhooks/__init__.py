"""Mutating and validating admission webhooks that route untrusted pods into sandboxed runtimes."""
