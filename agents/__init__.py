"""Agents built on memory cores."""
