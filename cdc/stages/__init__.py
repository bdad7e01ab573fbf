"""What a stage's state forbids, read by capture, apply, verify and status: the cutover
records (`record`), cut-over tables kept out of their targets (`kept_out`,
`kept_out_apply`, `backflow_kept`), finalized stages put back into a plan
(`finalized`).
"""
