"""Hallucination benchmarks (MMHal-Bench, Object-HalBench, AMBER) and their scorers."""
