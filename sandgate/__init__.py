"""sandgate: route untrusted Kubernetes workloads into sandboxed container runtimes."""

__version__ = "0.1.0"
