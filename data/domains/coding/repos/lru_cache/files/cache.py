"""Caches for the service."""
