"""Serving-certificate tooling for the webhook and extender."""
