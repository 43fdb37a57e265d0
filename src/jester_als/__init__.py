"""jester-als: Spark ALS and a driver-side NumPy ALS on Jester-shaped explicit ratings."""

__version__ = "0.1.0"
