"""
What SheLLM remembers: the usage ledger and the metrics.
"""
