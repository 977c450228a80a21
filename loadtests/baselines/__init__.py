"""Baseline servers that mlgate is benchmarked against (see loadtests/README.md).

They are written the way a user following each framework's documentation
would write them -- deliberately not tuned -- so the comparison answers
"what does mlgate buy over the obvious approach?".
"""
