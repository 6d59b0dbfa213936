"""
SheLLM dialects: request parsers and event writers.
"""
