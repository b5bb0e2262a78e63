"""Python for what the bundle's configs cannot say (the cascade's crop, its per-vertebra windows); imported as
``scripts``."""
