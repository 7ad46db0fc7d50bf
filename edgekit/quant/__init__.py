"""Reduced precision on the host: calibration sets, Q/DQ INT8, FP16, and the accuracy gate."""
