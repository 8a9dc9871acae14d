"""Whole-stack tests: Tamiyo, Tolaria and Nissa as real processes on a real Redis."""
