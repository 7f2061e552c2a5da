"""Pydantic models for every CRD. They are the single source of truth: crds/*.yaml is generated from them."""
