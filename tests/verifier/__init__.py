"""The verifier: live passes, reports, repair."""
