"""Model assembly."""
