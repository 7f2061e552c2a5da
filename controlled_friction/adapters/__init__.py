"""The only modules that talk to the outside world: Kubernetes (`kube`) and Prometheus (`prometheus`)."""
