"""gin experiment files, installed as package data (`detlab.gin_configs`)."""
