"""controlled-friction: canary rollouts with policy-driven friction for Kubernetes."""

__version__ = "0.1.0"
