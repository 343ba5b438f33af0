"""Published weights from other code bases, loaded into detlab models by name mapping."""
