"""kube-scheduler extender that places sandboxed pods only where a healthy sandbox runtime has room."""
