"""jester-als: Spark ALS and a driver-side NumPy ALS on Jester-shaped explicit ratings."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # jester_als.load_model (jester_als.models.load_model), imported on first use so that importing the package
    # needs no pyspark: the NumPy engine, the generator and the MLflow model run without it.
    if name == "load_model":
        from jester_als.models import load_model

        return load_model
    raise AttributeError(f"module 'jester_als' has no attribute {name!r}")
