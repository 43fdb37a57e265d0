"""Packaging for jester-als: a wheel whose console script is the job entry point (spark-submit, Databricks)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

# The version is stated once, in the package.
VERSION = re.search(r'__version__ = "([^"]+)"', Path("src/jester_als/__init__.py").read_text()).group(1)

setup(
    name="jester-als",
    version=VERSION,
    description="Spark ML ALS tuning and a driver-side NumPy ALS on Jester explicit ratings",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    # src/jester_als/conf links to the repository's conf/: the YAML configs ship in the wheel, so `--conf bench`
    # (or a path that does not exist here, like conf/bench.yaml) finds the packaged default after pip install.
    package_data={"jester_als": ["conf/*.yaml", "log4j2.properties"]},
    python_requires=">=3.10",
    # Clusters and Databricks bring their own Spark: pyspark is an extra, never a hard requirement.
    install_requires=[
        "numpy>=1.26",
        "pyyaml>=6.0",
        "pydantic>=2.5",  # the typed config models (jester_als.config)
        "scipy>=1.10",  # sparse products in NumPy ALS when the rating pattern is too sparse to be dense
        "threadpoolctl>=3.1",  # NumPy ALS runs its own threads and keeps BLAS to one thread inside each
        "pyarrow>=15",  # baseline, bench, scale and the fallback collect ratings to the driver as Arrow
        "psutil>=5.9",  # scale: peak memory of its worker processes
    ],
    extras_require={
        # Local runs: Spark 4 (ML over Spark Connect) and pandas below 3 (pyspark 4.3 does not support
        # pandas 3). Clusters and Databricks bring their own pyspark.
        "spark": ["pyspark[connect]>=4.0,<5", "pandas>=2.0,<3"],
        "plot": ["matplotlib>=3.7"],
        # input.format: xls, the original Jester files (.xls and .xlsx)
        "excel": ["python-calamine>=0.2"],
        # The full package: its SQLite store is the local default (mlflow-skinny has no SQL store).
        "mlflow": ["mlflow>=3.0"],
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "chispa>=0.10",
            "databricks-bundles>=0.270",
            "matplotlib>=3.7",
            "mlflow>=3.0",
            "ruff>=0.6",
            "python-calamine>=0.2",
            "xlwt>=1.3",  # writes the .xls files the Excel tests read
            "jsonschema>=4.18",
        ],  # validates the bundle against the vendored bundle schema
    },
    entry_points={"console_scripts": ["jester-als = jester_als.cli:run"]},
)
