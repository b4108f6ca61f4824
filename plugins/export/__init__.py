"""Serving and export: the hub-ready student package."""
