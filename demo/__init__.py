"""The end-to-end demo and its synthetic sample data (stands above datakit, models and training)."""
