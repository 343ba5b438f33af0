"""Feature networks between backbone and heads."""
