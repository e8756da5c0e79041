"""The fast tier: lucidity's pure parts with real objects, no process and no socket (`pytest tests/unit`)."""
