"""What the operator and the pods share: the API models, the store and the run layout.

Imports neither kopf nor torch, so both sides can depend on it.
"""
