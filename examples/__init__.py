"""Example trainings, installed as `trainwarden.examples` so `trainwarden demo` can run them."""
