"""Pipeline stages: each a small Stage subclass over the manifest."""
