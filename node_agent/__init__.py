"""Per-node agent: discovers, configures and advertises the node's sandbox runtimes and capacity."""
