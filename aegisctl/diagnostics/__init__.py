"""Diagnostics (`aegisctl diag`) and monitoring checks (`aegisctl check`)."""
