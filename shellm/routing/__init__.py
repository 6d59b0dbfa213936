"""
Between a parsed request and a provider: auth, rate limits, the router with
its fallback chain, the queues, the circuits and the health cache.
"""
