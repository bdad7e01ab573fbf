"""Reading the past from the retained change log: a row's history (`rows`) and a target
as of a time (`rebuild`).
"""
