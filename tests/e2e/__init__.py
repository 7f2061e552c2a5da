"""End-to-end tests against the real local sandbox (kube-apiserver, kwok, Prometheus)."""
