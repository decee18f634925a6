"""Face geometry and composition: detection, alignment, parsing masks and paste-back.

Each module is a set of small functions over NumPy arrays (BGR images, ``(2, 3)`` affines); see
``docs/ARCHITECTURE.md`` for the contracts between them.
"""
