"""The A/B benchmark: the baseline pipeline against the same pipeline with TrackingBERT features.

`config` and `runner` produce the per-seed, per-event numbers; `statistics`, `report` and `plots` turn
them into paired differences with bootstrap intervals, REPORT.md and figures. Nothing is imported here,
so the statistics and report can be used without loading torch through the runner.
"""
