"""Tests of the event catalogue and the projections."""
