"""rexomni: detection by next-point prediction.

The five code folders install under one namespace (`rexomni`, `rexomni.sft`, `rexomni.grpo`,
`rexomni.data_engines`, `rexomni.eval`) so that no generic top-level name such as `eval` lands in
site-packages.
"""

from setuptools import find_packages, setup

SUBPACKAGES = ("sft", "grpo", "data_engines", "eval")
# Folders of data files only (no __init__.py): listed as packages so that package_data ships them.
DATA_FOLDERS = ("sft.configs", "sft.launch", "eval.benchmarks")
CORE_DATA_FOLDERS = ("rexomni.default_model",)  # the shipped model: weights, tokenizer, model card


def _packages():
    packages = ["rexomni"] + [f"rexomni.{p}" for p in find_packages("rexomni")]
    for sub in SUBPACKAGES:
        packages += [f"rexomni.{sub}"] + [f"rexomni.{sub}.{p}" for p in find_packages(sub)]
    return packages + [f"rexomni.{folder}" for folder in DATA_FOLDERS] + list(CORE_DATA_FOLDERS)


setup(
    name="rexomni",
    version="0.1.0",
    description="Detection by next-point prediction with a Qwen2.5-VL model",
    python_requires=">=3.10",
    packages=_packages(),
    package_dir={"rexomni": "rexomni", **{f"rexomni.{sub}": sub for sub in SUBPACKAGES}},
    package_data={"": ["*.yaml", "*.json", "*.jinja", "*.txt", "*.sh", "*.slurm", "*.example", "*.safetensors",
                       "*.md"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0,<6",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "numpy>=1.26",
        "pillow>=10",
        "pyyaml>=6",
        "tqdm>=4.66",
        "scipy>=1.11",
        "matplotlib>=3.8",
    ],
    extras_require={
        "train": ["trl>=1.0", "peft>=0.15", "deepspeed>=0.16", "accelerate>=1.5", "datasets>=3.0",
                  "tensorboard>=2.16"],
        "eval": ["pycocotools>=2.0.8", "faster-coco-eval>=1.6"],
        # Negative images on real photographs: an inpainting pipeline from a local path.
        "inpaint": ["diffusers>=0.30"],
        "gpu": ["flash-attn>=2.6", "qwen-vl-utils>=0.0.10", "vllm>=0.8"],
        "app": ["gradio>=6.0"],  # `rexomni app`
        "supervision": ["supervision>=0.25"],
        # Selenium drives the app's browser test with the system's Chromium.
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "ruff>=0.6", "diffusers>=0.30",
                "selenium>=4.20"],
    },
    entry_points={"console_scripts": ["rexomni=rexomni.cli:main"]},
)
