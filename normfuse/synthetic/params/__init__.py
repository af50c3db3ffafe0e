"""Derived control-curve parameters (JSON) shipped with the simulator; see derive_params.py."""
