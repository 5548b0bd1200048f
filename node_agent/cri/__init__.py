"""The Container Runtime Interface (CRI) over gRPC: committed message stubs and a typed client."""
