"""Python for what the bundle's configs cannot say (the two-stage cascade's crop); imported as ``scripts``."""
