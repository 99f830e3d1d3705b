"""Pallas-kernel package of zoo. Each op is a folder with `api.py` (dispatch), `reference.py`
(readable truth) and fast paths. Nothing here imports `zoo`."""
