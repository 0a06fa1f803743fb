"""Torch-free conversion of the released ``reflex.pt`` checkpoint.

Kept import-light on purpose: converting must work on machines (e.g. Apple
Silicon with only MLX) where torch is not installed, so nothing here imports
torch or mlx at package import time.
"""
