"""`sandgate demo`: the whole system on a built-in edge cluster, no cluster needed."""
