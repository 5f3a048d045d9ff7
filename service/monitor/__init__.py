"""Drift monitoring: reference profiles, streaming bin counts, statistics and drift signals.

A version whose directory holds a reference profile (`reference.json`, built by `mlgate monitor
reference`) has every scored row counted into that profile's bins; each judged window compares
the counts with the reference at thresholds from the statistic's null distribution at the
window's size, corrected for the number of features tested.
"""
