"""A differential, stateful fuzzer for the capture -> log -> apply path.

It generates legacy schemas and bot workloads (DML and DDL), replicates them through the
real pipeline, and checks after every step that each target table equals its legacy table
byte for byte and storage class for storage class, with an oracle of its own, and that the
verifier agrees with that oracle. See docs/fuzzing.md.
"""
