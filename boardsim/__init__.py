"""Simulated NuLink3 probes and NuMicro boards at the hardware boundary."""
