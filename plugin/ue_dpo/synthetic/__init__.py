"""Synthetic worlds with known ground truth, and tiny random-weight models built from real config classes.

They serve the embedded experiments (`ue-dpo demo`), the benchmark (`bench/run.py`) and the test suite: everything
here runs on a CPU with no network.
"""
