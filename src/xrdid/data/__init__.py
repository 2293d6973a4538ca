"""Data sets built from the physics: the CIF library, simulated pattern sets, augmented splits,
measured test sets and the universal synthetic benchmark."""
