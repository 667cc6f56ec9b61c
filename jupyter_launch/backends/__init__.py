"""Backends turn a claimed job into a process, a container or a Kubernetes Job."""
