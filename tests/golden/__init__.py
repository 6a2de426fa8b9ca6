"""Golden tests: corpus inputs and the xDS meshd generates for them, stored as JSON.

See cases.py for the inputs, regen.py to update the stored output after review
(`python -m tests.golden.regen`), tests/unit/test_golden_traffic.py for the comparison.
"""
