"""The kubelet device plugin API v1beta1 (the subset the agent uses): proto and generated stubs."""
