"""`controlled-friction dashboard`: a local web UI that reads and acts as the kubeconfig's user."""
