"""Model monitoring: drift against reference profiles, and label feedback.

A version whose directory holds a reference profile (`reference.json`, built by `mlgate monitor
reference`) has every scored row counted into that profile's bins; each judged window compares
the counts with the reference at thresholds from the statistic's null distribution at the
window's size, corrected for the number of features tested. Labels posted to /v1/feedback are
joined to the recorded prediction (feedback.py) and scored as realised quality (quality.py).
"""
