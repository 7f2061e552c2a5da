"""Local sandbox: a real Kubernetes control plane, kwok, Prometheus and a traffic simulator."""
