"""QuantizationSimModel and its configuration: quantsim config files, calibration, QAT."""
